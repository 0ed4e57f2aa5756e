//! `iam-broker gcp` settings (`docs/protocols.md#gcp`): the workload identity pool provider (the
//! `--audience`, also the JWT-SVID's `aud`), an optional service account to impersonate, the
//! project, default scopes, and the STS / IAM Credentials endpoints.

use sidecar_runtime::ConfigError;
use sidecar_runtime::config::pick;
use workload_client::Env;

use crate::config::{CommonArgs, ENV_AUDIENCE, validate_endpoint_for};

/// Env: the service account to impersonate.
pub const ENV_SERVICE_ACCOUNT: &str = "SPIFFE_IAM_BROKER_SERVICE_ACCOUNT";
/// Env: the project ID the metadata server reports.
pub const ENV_PROJECT_ID: &str = "SPIFFE_IAM_BROKER_PROJECT_ID";
/// Env: comma-separated default scopes.
pub const ENV_SCOPES: &str = "SPIFFE_IAM_BROKER_SCOPES";
/// Env: Google STS endpoint.
pub const ENV_STS_ENDPOINT: &str = "SPIFFE_IAM_BROKER_STS_ENDPOINT";
/// Env: IAM Credentials endpoint.
pub const ENV_IAM_CREDENTIALS_ENDPOINT: &str = "SPIFFE_IAM_BROKER_IAM_CREDENTIALS_ENDPOINT";

/// Google's STS.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.googleapis.com";
/// Google's IAM Credentials API.
pub const DEFAULT_IAM_CREDENTIALS_ENDPOINT: &str = "https://iamcredentials.googleapis.com";
/// What the metadata server grants by default (and what impersonation needs from STS).
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// `gcp` flags.
#[derive(Debug, Default, clap::Args)]
pub struct GcpArgs {
    /// Shared flags (`--audience` is the pool provider:
    /// //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Service account to impersonate with the federated token (optional).
    #[arg(long)]
    pub service_account: Option<String>,
    /// Project ID the metadata server reports.
    #[arg(long)]
    pub project_id: Option<String>,
    /// Comma-separated default OAuth scopes [default: cloud-platform].
    #[arg(long)]
    pub scopes: Option<String>,
    /// STS endpoint (plain http only to loopback, for tests) [default: https://sts.googleapis.com].
    #[arg(long)]
    pub sts_endpoint: Option<String>,
    /// IAM Credentials endpoint [default: https://iamcredentials.googleapis.com].
    #[arg(long)]
    pub iam_credentials_endpoint: Option<String>,
}

/// Validated `gcp` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcpConfig {
    /// The pool provider (STS `audience`).
    pub audience: String,
    /// The project number, from the audience.
    pub project_number: String,
    /// Service account to impersonate.
    pub service_account: Option<String>,
    /// Project ID.
    pub project_id: String,
    /// Default scopes.
    pub scopes: Vec<String>,
    /// STS endpoint, no trailing slash.
    pub sts_endpoint: String,
    /// IAM Credentials endpoint, no trailing slash.
    pub iam_credentials_endpoint: String,
}

impl GcpConfig {
    /// Reads the `gcp` settings (the audience has been required by the shared settings).
    pub fn load(args: &GcpArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let (setting, audience) = pick(
            args.common.audience.as_deref(),
            "--audience",
            env,
            ENV_AUDIENCE,
        )
        .unwrap_or_else(|| (ENV_AUDIENCE.to_owned(), String::new()));
        let project_number =
            parse_audience(&audience).map_err(|r| ConfigError::new(setting, &audience, r))?;
        let service_account = match pick(
            args.service_account.as_deref(),
            "--service-account",
            env,
            ENV_SERVICE_ACCOUNT,
        ) {
            Some((setting, v)) => {
                Some(check_email(&v).map_err(|r| ConfigError::new(setting, &v, r))?)
            }
            None => None,
        };
        let project_id = match pick(
            args.project_id.as_deref(),
            "--project-id",
            env,
            ENV_PROJECT_ID,
        ) {
            Some((setting, v)) => {
                check_project_id(&v).map_err(|r| ConfigError::new(setting, &v, r))?;
                v
            }
            None => {
                return Err(ConfigError::new(
                    ENV_PROJECT_ID,
                    "",
                    "a project ID is required (--project-id or SPIFFE_IAM_BROKER_PROJECT_ID): the client libraries ask the metadata server for it",
                ));
            }
        };
        let scopes = match pick(args.scopes.as_deref(), "--scopes", env, ENV_SCOPES) {
            Some((setting, v)) => parse_scopes(&v).map_err(|r| ConfigError::new(setting, &v, r))?,
            None => vec![CLOUD_PLATFORM.to_owned()],
        };
        let endpoint = |flag: Option<&str>, name: &str, var: &str, default: &str| match pick(
            flag, name, env, var,
        ) {
            Some((setting, v)) => {
                validate_endpoint_for(&v, default).map_err(|r| ConfigError::new(setting, &v, r))
            }
            None => Ok(default.to_owned()),
        };
        let sts_endpoint = endpoint(
            args.sts_endpoint.as_deref(),
            "--sts-endpoint",
            ENV_STS_ENDPOINT,
            DEFAULT_STS_ENDPOINT,
        )?;
        let iam_credentials_endpoint = endpoint(
            args.iam_credentials_endpoint.as_deref(),
            "--iam-credentials-endpoint",
            ENV_IAM_CREDENTIALS_ENDPOINT,
            DEFAULT_IAM_CREDENTIALS_ENDPOINT,
        )?;
        Ok(Self {
            audience,
            project_number,
            service_account,
            project_id,
            scopes,
            sts_endpoint,
            iam_credentials_endpoint,
        })
    }
}

/// `//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER`:
/// the project number.
pub fn parse_audience(v: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER";
    let Some(rest) = v.strip_prefix("//iam.googleapis.com/projects/") else {
        return Err(EXPECTED.to_owned());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [
        number,
        "locations",
        "global",
        "workloadIdentityPools",
        pool,
        "providers",
        provider,
    ] = parts[..]
    else {
        return Err(EXPECTED.to_owned());
    };
    let id_ok = |s: &str| {
        (4..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the project must be its number: {EXPECTED}"));
    }
    if !id_ok(pool) || !id_ok(provider) {
        return Err(format!(
            "pool and provider IDs are 4–32 of a-z, 0-9, -: {EXPECTED}"
        ));
    }
    Ok(number.to_owned())
}

/// `NAME@PROJECT.iam.gserviceaccount.com` (or any address shaped like one: it becomes a URL
/// path segment).
pub fn check_email(v: &str) -> Result<String, String> {
    let ok = v.split_once('@').is_some_and(|(name, domain)| {
        !name.is_empty()
            && domain.contains('.')
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b))
    });
    if ok {
        Ok(v.to_owned())
    } else {
        Err("expected a service account email like app@PROJECT.iam.gserviceaccount.com".to_owned())
    }
}

/// Project IDs: 6–30 of a-z, 0-9, `-`, starting with a letter (domain-scoped `example.com:p`
/// allowed).
pub fn check_project_id(v: &str) -> Result<(), String> {
    let id = v.rsplit(':').next().unwrap_or(v);
    let ok = (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("expected a project ID: 6–30 of a-z, 0-9 and -, starting with a letter".to_owned())
    }
}

/// Comma-separated scope URLs, sorted and deduplicated (a cache key).
pub fn parse_scopes(v: &str) -> Result<Vec<String>, String> {
    let mut scopes: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return Err("expected comma-separated OAuth scopes".to_owned());
    }
    if scopes.len() > 16 {
        return Err("at most 16 scopes".to_owned());
    }
    for s in &scopes {
        let ok = s.len() <= 256
            && s.starts_with("https://")
            && s.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !ok {
            return Err(format!(
                "{:?} is not a scope URL like {CLOUD_PLATFORM}",
                s.chars().take(64).collect::<String>()
            ));
        }
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_emails_projects_scopes() {
        assert_eq!(
            parse_audience(
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/spiffe-pool/providers/spire"
            )
            .unwrap(),
            "123456789012"
        );
        assert!(parse_audience("https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/prov").is_err());
        assert!(parse_audience("//iam.googleapis.com/projects/my-project/locations/global/workloadIdentityPools/pool/providers/prov").is_err());
        assert!(check_email("app@proj.iam.gserviceaccount.com").is_ok());
        assert!(check_email("app/../x@y.z").is_err());
        assert!(check_project_id("my-project-1").is_ok());
        assert!(check_project_id("1project").is_err());
        assert_eq!(
            parse_scopes(&format!(
                "{CLOUD_PLATFORM}, https://b.example/x,{CLOUD_PLATFORM}"
            ))
            .unwrap(),
            ["https://b.example/x", CLOUD_PLATFORM]
        );
        assert!(parse_scopes("cloud-platform").is_err());
    }
}
