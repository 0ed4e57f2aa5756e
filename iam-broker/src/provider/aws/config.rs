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
use super::roles_anywhere::RolesAnywhereSettings;
use super::session_name::SessionName;
use crate::config::{required, secret_arg, validate_endpoint, validate_endpoint_for};
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
/// Env: IAM Roles Anywhere trust anchor (turns the Roles Anywhere mode on).
pub const ENV_TRUST_ANCHOR_ARN: &str = "SPIFFE_IAM_BROKER_TRUST_ANCHOR_ARN";
/// Env: IAM Roles Anywhere profile.
pub const ENV_PROFILE_ARN: &str = "SPIFFE_IAM_BROKER_PROFILE_ARN";
/// Env: IAM Roles Anywhere endpoint override.
pub const ENV_ROLES_ANYWHERE_ENDPOINT: &str = "SPIFFE_IAM_BROKER_ROLES_ANYWHERE_ENDPOINT";
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
/// `--trust-anchor-arn`.
pub const TRUST_ANCHOR_ARN: Setting = Setting::new(
    "--trust-anchor-arn",
    ENV_TRUST_ANCHOR_ARN,
    "IAM Roles Anywhere trust anchor: sign CreateSession with the X.509-SVID instead of sending the JWT-SVID to STS (needs --profile-arn)",
);
/// `--profile-arn`.
pub const PROFILE_ARN: Setting = Setting::new(
    "--profile-arn",
    ENV_PROFILE_ARN,
    "IAM Roles Anywhere profile holding --role-arn (with --trust-anchor-arn)",
);
/// `--roles-anywhere-endpoint`.
pub const ROLES_ANYWHERE_ENDPOINT: Setting = Setting::new(
    "--roles-anywhere-endpoint",
    ENV_ROLES_ANYWHERE_ENDPOINT,
    "IAM Roles Anywhere endpoint URL, no path (plain http only to loopback) [default: https://rolesanywhere.REGION.amazonaws.com]",
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
    &TRUST_ANCHOR_ARN,
    &PROFILE_ARN,
    &ROLES_ANYWHERE_ENDPOINT,
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
    /// IAM Roles Anywhere trust anchor ARN: CreateSession signed with the X.509-SVID instead
    /// of AssumeRoleWithWebIdentity with the JWT-SVID (for trust domains without a public
    /// OIDC issuer). Needs --profile-arn.
    #[arg(long)]
    pub trust_anchor_arn: Option<String>,
    /// IAM Roles Anywhere profile ARN (its roles must include --role-arn).
    #[arg(long)]
    pub profile_arn: Option<String>,
    /// IAM Roles Anywhere endpoint URL, no path [default: https://rolesanywhere.REGION.amazonaws.com].
    #[arg(long)]
    pub roles_anywhere_endpoint: Option<String>,
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
    /// IAM Roles Anywhere instead of STS (`None`: STS with the JWT-SVID).
    pub roles_anywhere: Option<RolesAnywhereSettings>,
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
        let roles_anywhere = roles_anywhere(args, r, region.as_str(), sts_endpoint.is_some());
        Some(Self {
            sts: AwsSettings {
                role_arn: role_arn?,
                region,
                sts_endpoint,
                duration,
                session_name,
            },
            container_token: container_token?,
            roles_anywhere: roles_anywhere?,
        })
    }
}

/// The Roles Anywhere settings: both ARNs or neither (`Some(None)`: STS); `None` when one is
/// bad (recorded). The ARNs' region must be the signing region (`--region`), as the service
/// requires of the trust anchor and the profile.
fn roles_anywhere(
    args: &AwsArgs,
    r: &mut Reader<'_>,
    region: &str,
    sts_endpoint: bool,
) -> Option<Option<RolesAnywhereSettings>> {
    let arn = |kind: &'static str| {
        move |v: &str| validate_roles_anywhere_arn(v, kind, region).map(|()| v.to_owned())
    };
    let anchor = r.get(
        &TRUST_ANCHOR_ARN,
        args.trust_anchor_arn.as_deref(),
        arn("trust-anchor"),
    );
    let profile = r.get(&PROFILE_ARN, args.profile_arn.as_deref(), arn("profile"));
    let endpoint = r.get(
        &ROLES_ANYWHERE_ENDPOINT,
        args.roles_anywhere_endpoint.as_deref(),
        |v| {
            validate_endpoint_for(v, "https://rolesanywhere.eu-west-1.amazonaws.com")
                .map_err(|e| e.to_string())?;
            endpoint_host(v).map(|host| (v.trim_end_matches('/').to_owned(), host))
        },
    );
    let (anchor_given, profile_given) = (
        r.raw(&TRUST_ANCHOR_ARN, args.trust_anchor_arn.as_deref()),
        r.raw(&PROFILE_ARN, args.profile_arn.as_deref()),
    );
    match (anchor_given, profile_given) {
        (None, None) => {
            if let Some(s) = r.raw(
                &ROLES_ANYWHERE_ENDPOINT,
                args.roles_anywhere_endpoint.as_deref(),
            ) {
                r.check::<()>(Err(ConfigError::new(
                    s.setting,
                    s.value,
                    "applies only with --trust-anchor-arn and --profile-arn",
                )));
                return None;
            }
            Some(None)
        }
        (Some(s), None) | (None, Some(s)) => {
            r.check::<()>(Err(ConfigError::new(
                s.setting,
                s.value,
                "Roles Anywhere needs both --trust-anchor-arn and --profile-arn",
            )));
            None
        }
        (Some(s), Some(_)) if sts_endpoint => {
            r.check::<()>(Err(ConfigError::new(
                s.setting,
                s.value,
                "--sts-endpoint does not apply with Roles Anywhere (set --roles-anywhere-endpoint)",
            )));
            None
        }
        (Some(_), Some(_)) => {
            let (endpoint, host) = match endpoint {
                Some(e) => e,
                None => {
                    // The partition's DNS suffix (China's regions have their own).
                    let suffix = match anchor.as_deref().map(|a| a.split(':').nth(1)) {
                        Some(Some("aws-cn")) => "amazonaws.com.cn",
                        _ => "amazonaws.com",
                    };
                    let host = format!("rolesanywhere.{region}.{suffix}");
                    (format!("https://{host}"), host)
                }
            };
            Some(Some(RolesAnywhereSettings {
                trust_anchor_arn: anchor?,
                profile_arn: profile?,
                endpoint,
                host,
            }))
        }
    }
}

/// The `Host` a client sends for `url` (`host[:port]`, the scheme's default port left out),
/// which the request is signed for. `url` has passed `validate_endpoint_for`, which refuses a
/// path or query (the signature covers `/sessions` only).
fn endpoint_host(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| {
        "expected a URL like https://rolesanywhere.eu-west-1.amazonaws.com".to_owned()
    })?;
    let host = uri.host().ok_or_else(|| "a URL with a host".to_owned())?;
    let default = if uri.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    Ok(match uri.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host.to_owned(),
    })
}

/// `arn:PARTITION:rolesanywhere:REGION:ACCOUNT:KIND/ID` in the signing region.
fn validate_roles_anywhere_arn(arn: &str, kind: &str, region: &str) -> Result<(), String> {
    let expected = format!("expected arn:aws:rolesanywhere:{region}:123456789012:{kind}/ID");
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [scheme, partition, service, arn_region, account, resource] = parts[..] else {
        return Err(expected);
    };
    if scheme != "arn" || service != "rolesanywhere" {
        return Err(format!("not a Roles Anywhere ARN: {expected}"));
    }
    if !matches!(partition, "aws" | "aws-cn" | "aws-us-gov") {
        return Err(format!(
            "unknown partition {partition:?} (aws, aws-cn or aws-us-gov): {expected}"
        ));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the account must be 12 digits: {expected}"));
    }
    let id_ok = resource
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !id_ok {
        return Err(format!("not a {kind}: {expected}"));
    }
    if arn_region != region {
        return Err(format!(
            "in region {arn_region}, but requests are signed for {region} (set --region {arn_region})"
        ));
    }
    Ok(())
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
