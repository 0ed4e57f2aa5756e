//! `iam-broker aws` settings (`docs/protocols.md#aws`): the role, region, STS endpoint, session,
//! and the container-credentials token. The environment names are the Istio `spire` injection
//! template's contract (`docs/protocols.md#istio-injection-template`):
//! `SPIFFE_IAM_BROKER_ROLE_ARN` from pod annotations; the container-credentials token uses the
//! SDKs' own `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)` so one variable in the pod spec serves
//! both the broker and the application.

use std::path::PathBuf;
use std::time::Duration;

use sidecar_runtime::ConfigError;
use sidecar_runtime::config::{self, pick};
use workload_client::Env;

use super::exchange::AwsSettings;
use super::session_name::SessionName;
use crate::config::{CommonArgs, secret_arg, validate_endpoint};
use crate::secret::Secret;
pub use crate::token::HeaderToken as ContainerToken;
use crate::token::check_token;

/// Env: the IAM role to assume.
pub const ENV_ROLE_ARN: &str = "SPIFFE_IAM_BROKER_ROLE_ARN";
/// Env: AWS region (then `AWS_REGION`, `AWS_DEFAULT_REGION`).
pub const ENV_REGION: &str = "SPIFFE_IAM_BROKER_REGION";
/// Env: STS endpoint URL override.
pub const ENV_STS_ENDPOINT: &str = "SPIFFE_IAM_BROKER_STS_ENDPOINT";
/// Env: session duration.
pub const ENV_DURATION: &str = "SPIFFE_IAM_BROKER_DURATION";
/// Env: fixed `RoleSessionName`.
pub const ENV_SESSION_NAME: &str = "SPIFFE_IAM_BROKER_SESSION_NAME";
/// Env (the SDKs' name): the container-credentials token.
pub const ENV_CONTAINER_TOKEN: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// Env (the SDKs' name): a file holding the container-credentials token.
pub const ENV_CONTAINER_TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";

/// STS's default session length.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// STS's limits on `DurationSeconds`.
pub const DURATION_RANGE: std::ops::RangeInclusive<u64> = 900..=43_200;
/// Region when none is configured (STS is global; us-east-1 hosts its global endpoint).
pub const DEFAULT_REGION: &str = "us-east-1";

/// `aws` flags.
#[derive(Debug, Default, clap::Args)]
pub struct AwsArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// IAM role to assume: arn:aws:iam::ACCOUNT:role/NAME.
    #[arg(long)]
    pub role_arn: Option<String>,
    /// AWS region of the STS endpoint [default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// STS endpoint URL (regional or VPC endpoint; plain http only to loopback, for tests).
    #[arg(long)]
    pub sts_endpoint: Option<String>,
    /// Session duration, 900–43200 s, as seconds or e.g. 1h [default: 3600].
    #[arg(long)]
    pub duration: Option<String>,
    /// Fixed RoleSessionName [default: derived from the SPIFFE ID].
    #[arg(long)]
    pub session_name: Option<String>,
    /// Token required in the Authorization header of /v1/container-creds (prefer the
    /// environment or a file: flags are visible in the process list).
    #[arg(long, value_parser = secret_arg)]
    pub container_token: Option<Secret>,
    /// File holding that token (re-read when it changes, for rotation).
    #[arg(long)]
    pub container_token_file: Option<PathBuf>,
}

/// `aws` settings.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    /// What the provider needs.
    pub sts: AwsSettings,
    /// Guard of `/v1/container-creds` (`None`: that endpoint answers 404).
    pub container_token: Option<ContainerToken>,
}

impl AwsConfig {
    /// Reads the `aws` settings.
    pub fn load(args: &AwsArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let role_arn = match pick(args.role_arn.as_deref(), "--role-arn", env, ENV_ROLE_ARN) {
            Some((setting, v)) => {
                validate_role_arn(&v).map_err(|reason| ConfigError::new(setting, &v, reason))?;
                v
            }
            None => {
                return Err(ConfigError::new(
                    ENV_ROLE_ARN,
                    "",
                    "a role ARN is required (--role-arn or SPIFFE_IAM_BROKER_ROLE_ARN)",
                ));
            }
        };

        let region = pick(args.region.as_deref(), "--region", env, ENV_REGION)
            .or_else(|| env.var("AWS_REGION").map(|v| ("AWS_REGION".to_owned(), v)))
            .or_else(|| {
                env.var("AWS_DEFAULT_REGION")
                    .map(|v| ("AWS_DEFAULT_REGION".to_owned(), v))
            });
        let region = match region {
            Some((setting, v)) => {
                let ok = !v.is_empty()
                    && v.len() <= 32
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(ConfigError::new(
                        setting,
                        v,
                        "expected a region name like eu-west-1",
                    ));
                }
                v
            }
            None => DEFAULT_REGION.to_owned(),
        };

        let sts_endpoint = match pick(
            args.sts_endpoint.as_deref(),
            "--sts-endpoint",
            env,
            ENV_STS_ENDPOINT,
        ) {
            Some((setting, v)) => Some(
                validate_endpoint(&v).map_err(|reason| ConfigError::new(setting, &v, reason))?,
            ),
            None => None,
        };

        let duration = match pick(args.duration.as_deref(), "--duration", env, ENV_DURATION) {
            Some((setting, v)) => {
                let d = match v.parse::<u64>() {
                    Ok(secs) => Duration::from_secs(secs),
                    Err(_) => config::duration(&setting, &v)?,
                };
                if !DURATION_RANGE.contains(&d.as_secs()) || d.subsec_nanos() != 0 {
                    return Err(ConfigError::new(
                        setting,
                        v,
                        "must be whole seconds from 900 (15m) to 43200 (12h), and at most the role's MaxSessionDuration",
                    ));
                }
                d
            }
            None => DEFAULT_DURATION,
        };

        let session_name = match pick(
            args.session_name.as_deref(),
            "--session-name",
            env,
            ENV_SESSION_NAME,
        ) {
            Some((setting, v)) => Some(
                SessionName::parse(&v).map_err(|reason| ConfigError::new(setting, &v, reason))?,
            ),
            None => None,
        };

        let container_token = container_token(args, env)?;

        Ok(Self {
            sts: AwsSettings {
                role_arn,
                region,
                sts_endpoint,
                duration,
                session_name,
            },
            container_token,
        })
    }
}

/// How errors name the token.
const TOKEN_WHAT: &str = "container-credentials token";

/// Flags before variables; within each, the file before the value (as the SDKs read
/// `_TOKEN_FILE` before `_TOKEN`).
fn container_token(args: &AwsArgs, env: &dyn Env) -> Result<Option<ContainerToken>, ConfigError> {
    enum Source {
        File(String, PathBuf),
        Value(String, Secret),
    }
    let flag_value = args.container_token.clone().filter(|s| !s.is_empty());
    let source = if let Some(path) = &args.container_token_file {
        Source::File("--container-token-file".to_owned(), path.clone())
    } else if let Some(token) = flag_value {
        Source::Value("--container-token".to_owned(), token)
    } else if let Some(path) = env.var(ENV_CONTAINER_TOKEN_FILE) {
        Source::File(ENV_CONTAINER_TOKEN_FILE.to_owned(), PathBuf::from(path))
    } else if let Some(token) = env.var(ENV_CONTAINER_TOKEN) {
        Source::Value(ENV_CONTAINER_TOKEN.to_owned(), Secret::new(token))
    } else {
        return Ok(None);
    };
    match source {
        Source::File(setting, path) => {
            let shown = path.display().to_string();
            let token = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(&setting, &shown, format!("cannot read: {e}")))?;
            check_token(TOKEN_WHAT, token.trim())
                .map_err(|reason| ConfigError::new(&setting, &shown, reason))?;
            Ok(Some(ContainerToken::File(path)))
        }
        Source::Value(setting, token) => {
            // Never echo the token itself.
            check_token(TOKEN_WHAT, token.expose())
                .map_err(|reason| ConfigError::new(&setting, "<redacted>", reason))?;
            Ok(Some(ContainerToken::Value(token)))
        }
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME` (`docs/protocols.md#aws-sts`; IAM's name rules).
pub fn validate_role_arn(arn: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected arn:aws:iam::123456789012:role/NAME";
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [scheme, partition, service, region, account, resource] = parts[..] else {
        return Err(EXPECTED.to_owned());
    };
    if scheme != "arn" || service != "iam" {
        return Err(format!("not an IAM ARN: {EXPECTED}"));
    }
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    if !partition_ok {
        return Err(format!("unknown partition {partition:?}: {EXPECTED}"));
    }
    if !region.is_empty() {
        return Err(format!("IAM ARNs have no region: {EXPECTED}"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the account must be 12 digits: {EXPECTED}"));
    }
    let Some(path) = resource.strip_prefix("role/") else {
        return Err(format!("not a role: {EXPECTED}"));
    };
    let name = path.rsplit('/').next().unwrap_or("");
    let name_ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    let path_ok = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-/".contains(c))
        && !path.contains("//");
    if !name_ok || !path_ok {
        return Err(format!(
            "invalid role name {name:?} (1–64 of letters, digits and _+=,.@-): {EXPECTED}"
        ));
    }
    Ok(())
}
