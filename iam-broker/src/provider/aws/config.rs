//! `iam-broker aws` settings (`docs/protocols.md#aws`): the role, region, STS endpoint, session,
//! and the container-credentials token. The environment names are the Istio `spire` injection
//! template's contract (`docs/protocols.md#istio-injection-template`):
//! `SPIFFE_IAM_BROKER_ROLE_ARN` from pod annotations; the container-credentials token uses the
//! SDKs' own `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)` so one variable in the pod spec serves
//! both the broker and the application.

use std::path::PathBuf;
use std::time::Duration;

use sidecar_runtime::ConfigError;
use sidecar_runtime::config;
use sidecar_runtime::settings::{Reader, Setting};

use super::exchange::AwsSettings;
use super::session_name::SessionName;
use crate::config::{required, secret_arg, validate_endpoint};
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

// === Settings ===

/// `--role-arn`.
pub const ROLE_ARN: Setting = Setting::new(
    "--role-arn",
    ENV_ROLE_ARN,
    "IAM role to assume, arn:aws:iam::ACCOUNT:role/NAME [required]",
);
/// `--region`, then the SDKs' variables.
pub const REGION: Setting = Setting::new(
    "--region",
    ENV_REGION,
    "AWS region of the STS endpoint [default: us-east-1]",
)
.or_env(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
/// `--sts-endpoint`.
pub const STS_ENDPOINT: Setting = Setting::new(
    "--sts-endpoint",
    ENV_STS_ENDPOINT,
    "STS endpoint URL (plain http only to loopback) [default: the region's]",
);
/// `--duration`.
pub const DURATION: Setting = Setting::new(
    "--duration",
    ENV_DURATION,
    "session duration, 900-43200 s, as seconds or e.g. 1h [default: 3600]",
);
/// `--session-name`.
pub const SESSION_NAME: Setting = Setting::new(
    "--session-name",
    ENV_SESSION_NAME,
    "fixed RoleSessionName [default: derived from the SPIFFE ID]",
);
/// `--container-token-file`: the SDKs' variable is ours, so one pod variable serves both.
pub const CONTAINER_TOKEN_FILE: Setting = Setting::new(
    "--container-token-file",
    ENV_CONTAINER_TOKEN_FILE,
    "file holding the token /v1/container-creds requires (re-read on change)",
);
/// `--container-token`.
pub const CONTAINER_TOKEN: Setting = Setting::new(
    "--container-token",
    ENV_CONTAINER_TOKEN,
    "the token /v1/container-creds requires [default: none, that endpoint answers 404]",
);

/// The `aws` rows, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &ROLE_ARN,
    &REGION,
    &STS_ENDPOINT,
    &DURATION,
    &SESSION_NAME,
    &CONTAINER_TOKEN_FILE,
    &CONTAINER_TOKEN,
];

/// `aws` flags.
#[derive(Debug, Default, clap::Args)]
pub struct AwsArgs {
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

// === impl AwsConfig ===

impl AwsConfig {
    /// Reads the `aws` settings, recording every bad one in `r`.
    pub fn load(args: &AwsArgs, r: &mut Reader<'_>) -> Option<Self> {
        let role_arn = required(r, &ROLE_ARN, args.role_arn.as_deref(), "a role ARN", |v| {
            validate_role_arn(v).map(|()| v.to_owned())
        });
        let region = r.get_or(
            &REGION,
            args.region.as_deref(),
            DEFAULT_REGION.to_owned(),
            |v| {
                let ok = v.len() <= 32
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if ok {
                    Ok(v.to_owned())
                } else {
                    Err("expected a region name like eu-west-1".to_owned())
                }
            },
        );
        let sts_endpoint = r.get(&STS_ENDPOINT, args.sts_endpoint.as_deref(), |v| {
            validate_endpoint(v).map_err(|e| e.to_string())
        });
        let duration = r.get_or(
            &DURATION,
            args.duration.as_deref(),
            DEFAULT_DURATION,
            parse_duration,
        );
        let session_name = r.get(
            &SESSION_NAME,
            args.session_name.as_deref(),
            SessionName::parse,
        );
        let container_token = container_token(args, r);
        Some(Self {
            sts: AwsSettings {
                role_arn: role_arn?,
                region,
                sts_endpoint,
                duration,
                session_name,
            },
            container_token: container_token?,
        })
    }
}

/// Whole seconds (`3600`) or a duration (`1h`) within STS's range.
fn parse_duration(v: &str) -> Result<Duration, String> {
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => config::duration("", v).map_err(|e| e.reason)?,
    };
    if !DURATION_RANGE.contains(&d.as_secs()) || d.subsec_nanos() != 0 {
        return Err(
            "must be whole seconds from 900 (15m) to 43200 (12h), and at most the role's MaxSessionDuration"
                .to_owned(),
        );
    }
    Ok(d)
}

/// How errors name the token.
const TOKEN_WHAT: &str = "container-credentials token";

/// Flags before variables; within each, the file before the value (as the SDKs read
/// `_TOKEN_FILE` before `_TOKEN`). Explicit code rather than one row's fallbacks: two rows
/// interleave (file flag, value flag, file variable, value variable). `Some(None)`: no token;
/// `None`: a bad one (recorded).
fn container_token(args: &AwsArgs, r: &mut Reader<'_>) -> Option<Option<ContainerToken>> {
    enum Source {
        File(String, PathBuf),
        Value(String, Secret),
    }
    let file_flag = args
        .container_token_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    let value_flag = args.container_token.clone().filter(|s| !s.is_empty());
    let source = match (file_flag, value_flag) {
        (Some(path), _) => Source::File(CONTAINER_TOKEN_FILE.flag.to_owned(), path.to_path_buf()),
        (None, Some(token)) => Source::Value(CONTAINER_TOKEN.flag.to_owned(), token),
        (None, None) => match (
            r.raw(&CONTAINER_TOKEN_FILE, None),
            r.raw(&CONTAINER_TOKEN, None),
        ) {
            (Some(s), _) => Source::File(s.setting, PathBuf::from(s.value)),
            (None, Some(s)) => Source::Value(s.setting, Secret::new(s.value)),
            (None, None) => return Some(None),
        },
    };
    let checked = match source {
        Source::File(setting, path) => {
            let shown = path.display().to_string();
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|token| check_token(TOKEN_WHAT, token.trim()))
                .map(|()| ContainerToken::File(path))
                .map_err(|reason| ConfigError::new(setting, shown, reason))
        }
        // Never echo the token itself.
        Source::Value(setting, token) => check_token(TOKEN_WHAT, token.expose())
            .map(|()| ContainerToken::Value(token))
            .map_err(|reason| ConfigError::new(setting, "<redacted>", reason)),
    };
    r.check(checked).map(Some)
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
