//! The command line and the configuration it selects: flags > environment > defaults, read
//! through [`Env`] so tests never touch the process environment. Every bad setting, shared or
//! the provider's, is reported at once, each naming its flag or variable, and the broker exits
//! with code 2.
//!
//! This file holds the one list of clouds (`clouds!`: the subcommand enum); the shared
//! settings are in [`crate::config`], and each provider's in `provider/<cloud>/config.rs`,
//! behind [`Provider`].

use sidecar_runtime::ConfigError;
use sidecar_runtime::settings::{self, ConfigErrors, Reader, Setting};
use workload_client::Env;

use crate::config::{self, Common, CommonArgs};
use crate::http::Service;
use crate::provider::{self, Context, Provider};

/// Declares the clouds once: the subcommand enum ([`Command`]), the chosen provider's settings
/// ([`ProviderConfig`]), and the dispatch from one to the other. A new cloud is one entry here.
macro_rules! clouds {
    ($($(#[$doc:meta])* $name:ident($provider:ty),)*) => {
        /// One subcommand per cloud.
        #[derive(Debug, clap::Subcommand)]
        pub enum Command {
            $(
                $(#[$doc])*
                #[command(after_help = after_help::<$provider>())]
                $name(ProviderArgs<$provider>),
            )*
        }

        /// The provider chosen by the subcommand, and its settings.
        #[derive(Clone, Debug)]
        pub enum ProviderConfig {
            $(
                $(#[$doc])*
                $name($provider),
            )*
        }

        // === impl Config ===

        impl Config {
            /// Builds the configuration from the command line and `env`; every bad setting is
            /// reported.
            pub fn load(cli: &Cli, env: &dyn Env) -> Result<Self, ConfigErrors> {
                match &cli.command {
                    $(Command::$name(args) => {
                        let (common, provider) = load(args, env)?;
                        Ok(Self {
                            common,
                            provider: ProviderConfig::$name(provider),
                        })
                    })*
                }
            }
        }

        // === impl ProviderConfig ===

        impl ProviderConfig {
            /// Builds the chosen provider's service.
            pub fn service(&self, cx: Context<'_>) -> anyhow::Result<Service> {
                match self {
                    $(Self::$name(provider) => provider.service(cx),)*
                }
            }
        }
    };
}

clouds! {
    /// AWS: AssumeRoleWithWebIdentity; serves credential_process JSON on /v1/creds and the
    /// container-credentials format on /v1/container-creds.
    Aws(provider::aws::AwsConfig),
    /// Azure: Entra ID token exchange (client assertion = JWT-SVID); serves the App Service
    /// managed identity endpoint GET /msi/token for ManagedIdentityCredential and
    /// DefaultAzureCredential (IDENTITY_ENDPOINT + IDENTITY_HEADER).
    Azure(provider::azure::AzureConfig),
    /// Google Cloud: STS token exchange (+ optional service account impersonation); serves
    /// the GCE metadata server for google-auth / ADC (GCE_METADATA_HOST, GCE_METADATA_IP).
    Gcp(provider::gcp::GcpConfig),
    /// Vault: JWT auth login with the JWT-SVID, the token renewed and re-logged; serves an API
    /// proxy like Vault Agent's (VAULT_ADDR=http://127.0.0.1:8200, X-Vault-Request: true).
    Vault(provider::vault::VaultConfig),
}

/// Command line: `iam-broker <cloud> [flags]`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "iam-broker",
    version,
    about = "Trades the workload's JWT-SVID for cloud credentials and serves them on loopback",
    after_help = cli_after_help()
)]
pub struct Cli {
    /// The cloud to get credentials from.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand's flags: the shared ones, then the provider's.
#[derive(Debug, clap::Args)]
pub struct ProviderArgs<P: Provider> {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The provider's flags.
    #[command(flatten)]
    pub provider: P::Args,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Settings every provider shares.
    pub common: Common,
    /// The provider and its settings.
    pub provider: ProviderConfig,
}

/// The shared settings, then `P`'s, from one reader: every bad setting of both is reported.
fn load<P: Provider>(args: &ProviderArgs<P>, env: &dyn Env) -> Result<(Common, P), ConfigErrors> {
    let mut r = Reader::new(env);
    let common = Common::read(&args.common, &P::SHARED, &mut r);
    let provider = P::read(&args.provider, common.as_ref(), &mut r);
    r.finish()?;
    // Each `None` above recorded its error, which `finish` returned; this keeps that promise
    // checked rather than assumed.
    match (common, provider) {
        (Some(common), Some(provider)) => Ok((common, provider)),
        _ => Err(ConfigError::new(
            "configuration",
            "",
            "a setting was refused without an error recorded (a bug in iam-broker)",
        )
        .into()),
    }
}

/// `iam-broker <cloud> --help`'s text after the flags: the shared settings' defaults for this
/// provider, and every variable it reads, from the rows.
pub fn after_help<P: Provider>() -> String {
    let rules = P::SHARED;
    let audience = match rules.default_audience {
        Some(default) => format!("--audience defaults to {default}"),
        None => "--audience is required".to_owned(),
    };
    let rows: Vec<&Setting> = config::SETTINGS
        .iter()
        .chain(P::SETTINGS)
        .copied()
        .collect();
    let mut help = format!(
        "Precedence: flag > environment > default; every bad setting is reported at once \
         (exit code 2). Here {audience}, and --listen defaults to {}.\n\n{}",
        rules.default_listen,
        settings::env_help(&rows)
    );
    if !P::HELP.is_empty() {
        help.push('\n');
        help.push_str(P::HELP);
    }
    help
}

/// `iam-broker --help`'s text after the commands.
fn cli_after_help() -> String {
    format!(
        "Each cloud's flags and variables: iam-broker <cloud> --help. Shared by all:\n\n{}",
        settings::env_help(config::SETTINGS)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::config::*;
    use crate::provider::aws::config::*;
    use crate::secret::Secret;

    const ARN: &str = "arn:aws:iam::123456789012:role/demo";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_all(args, vars).map_err(|mut e| e.0.remove(0))
    }

    fn load_all(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
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
    fn defaults_match_the_istio_template() {
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

    #[test]
    fn roles_anywhere_needs_both_arns_in_the_signing_region_and_no_sts_endpoint() {
        const TA: &str = "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/a1b2-c3";
        const PROFILE: &str = "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/d4e5-f6";
        let c = load_all(
            &[
                "--trust-anchor-arn",
                TA,
                "--profile-arn",
                PROFILE,
                "--region",
                "eu-west-1",
            ],
            TEMPLATE,
        )
        .unwrap();
        let ra = aws(&c).roles_anywhere.clone().unwrap();
        assert_eq!(ra.endpoint, "https://rolesanywhere.eu-west-1.amazonaws.com");
        assert_eq!(ra.host, "rolesanywhere.eu-west-1.amazonaws.com");
        let local = load_all(
            &[
                "--trust-anchor-arn",
                TA,
                "--profile-arn",
                PROFILE,
                "--region",
                "eu-west-1",
                "--roles-anywhere-endpoint",
                "http://127.0.0.1:8443/",
            ],
            TEMPLATE,
        )
        .unwrap();
        assert_eq!(
            aws(&local).roles_anywhere.clone().unwrap().host,
            "127.0.0.1:8443"
        );
        assert!(
            aws(&load_all(&[], TEMPLATE).unwrap())
                .roles_anywhere
                .is_none()
        );
        let china = load_all(
            &[
                "--trust-anchor-arn",
                "arn:aws-cn:rolesanywhere:cn-north-1:123456789012:trust-anchor/a1",
                "--profile-arn",
                "arn:aws-cn:rolesanywhere:cn-north-1:123456789012:profile/b2",
                "--region",
                "cn-north-1",
            ],
            TEMPLATE,
        )
        .unwrap();
        assert_eq!(
            aws(&china).roles_anywhere.clone().unwrap().host,
            "rolesanywhere.cn-north-1.amazonaws.com.cn"
        );

        for (args, setting, says) in [
            (
                vec!["--trust-anchor-arn", TA, "--region", "eu-west-1"],
                "--trust-anchor-arn",
                "both",
            ),
            (
                vec!["--trust-anchor-arn", TA, "--profile-arn", PROFILE],
                "--trust-anchor-arn",
                "--region eu-west-1",
            ),
            (
                vec![
                    "--trust-anchor-arn",
                    PROFILE,
                    "--profile-arn",
                    PROFILE,
                    "--region",
                    "eu-west-1",
                ],
                "--trust-anchor-arn",
                "not a trust-anchor",
            ),
            (
                vec![
                    "--trust-anchor-arn",
                    TA,
                    "--profile-arn",
                    PROFILE,
                    "--region",
                    "eu-west-1",
                    "--sts-endpoint",
                    "http://127.0.0.1:5000",
                ],
                "--trust-anchor-arn",
                "--sts-endpoint",
            ),
            (
                vec![
                    "--trust-anchor-arn",
                    TA,
                    "--profile-arn",
                    PROFILE,
                    "--region",
                    "eu-west-1",
                    "--roles-anywhere-endpoint",
                    "https://ra.example/prefix",
                ],
                "--roles-anywhere-endpoint",
                "no path",
            ),
            (
                vec!["--roles-anywhere-endpoint", "https://ra.example"],
                "--roles-anywhere-endpoint",
                "only with",
            ),
            (
                vec![
                    "--trust-anchor-arn",
                    "arn:awsx:rolesanywhere:eu-west-1:123456789012:trust-anchor/a1",
                    "--profile-arn",
                    PROFILE,
                    "--region",
                    "eu-west-1",
                ],
                "--trust-anchor-arn",
                "unknown partition",
            ),
        ] {
            let errors = load_all(&args, TEMPLATE).unwrap_err();
            let text = errors.to_string();
            assert!(
                errors.0.iter().any(|e| e.setting == setting) && text.contains(says),
                "{args:?}: {text}"
            );
        }
    }

    #[test]
    fn a_bad_shared_and_a_bad_provider_setting_are_reported_together() {
        let errors = load_all(
            &["--fetch-wait", "5m", "--duration", "60"],
            &[(ENV_ROLE_ARN, "demo")],
        )
        .unwrap_err();
        let settings: Vec<&str> = errors.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            settings,
            [ENV_AUDIENCE, "--fetch-wait", ENV_ROLE_ARN, "--duration"]
        );
        let text = errors.to_string();
        assert!(text.starts_with("4 settings are invalid:"), "{text}");

        // The same for a provider whose settings depend on the shared ones.
        let cli = Cli::try_parse_from([
            "iam-broker",
            "vault",
            "--log-format",
            "xml",
            "--use-auto-auth-token",
            "false",
        ])
        .unwrap();
        let errors = Config::load(&cli, &env(&[])).unwrap_err();
        let settings: Vec<&str> = errors.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "--log-format",
                "VAULT_ADDR",
                "SPIFFE_IAM_BROKER_ROLE",
                "--use-auto-auth-token"
            ]
        );
    }

    /// An [`Env`] that remembers every variable asked for.
    #[derive(Default)]
    struct Recording(std::cell::RefCell<std::collections::BTreeSet<String>>);

    impl Env for Recording {
        fn var(&self, name: &str) -> Option<String> {
            self.0.borrow_mut().insert(name.to_owned());
            None
        }
    }

    #[test]
    fn each_subcommands_help_names_every_variable_it_reads() {
        use clap::CommandFactory as _;
        let mut cli = Cli::command();
        let names: Vec<String> = cli
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(names, ["aws", "azure", "gcp", "vault"]);
        for name in names {
            // With nothing set, every row and every fallback is asked for.
            let read = Recording::default();
            let parsed = Cli::try_parse_from(["iam-broker", name.as_str()]).unwrap();
            assert!(
                Config::load(&parsed, &read).is_err(),
                "{name}: required settings"
            );
            let read = read.0.into_inner();
            assert!(read.contains(ENV_SOCKET) && read.contains("SPIFFE_ENDPOINT_SOCKET"));
            let Some(sub) = cli.find_subcommand_mut(&name) else {
                panic!("{name}");
            };
            let help = sub.render_long_help().to_string();
            for var in &read {
                assert!(
                    help.contains(var.as_str()),
                    "{name} --help lacks {var}:\n{help}"
                );
            }
        }
    }
}
