//! `iam-broker gcp` settings (`docs/protocols.md#gcp`): the workload identity pool provider (the
//! `--audience`, also the JWT-SVID's `aud`), an optional service account to impersonate, the
//! project, default scopes, and the STS / IAM Credentials endpoints.

use sidecar_runtime::settings::{Reader, Setting};

use crate::config::{Common, required, validate_endpoint_for};

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

// === Settings ===

/// `--service-account`.
pub const SERVICE_ACCOUNT: Setting = Setting::new(
    "--service-account",
    ENV_SERVICE_ACCOUNT,
    "service account to impersonate with the federated token [default: none]",
);
/// `--project-id`.
pub const PROJECT_ID: Setting = Setting::new(
    "--project-id",
    ENV_PROJECT_ID,
    "project ID the metadata server reports [required]",
);
/// `--scopes`.
pub const SCOPES: Setting = Setting::new(
    "--scopes",
    ENV_SCOPES,
    "comma-separated default OAuth scopes [default: cloud-platform]",
);
/// `--sts-endpoint`.
pub const STS_ENDPOINT: Setting = Setting::new(
    "--sts-endpoint",
    ENV_STS_ENDPOINT,
    "STS endpoint (plain http only to loopback) [default: https://sts.googleapis.com]",
);
/// `--iam-credentials-endpoint`.
pub const IAM_CREDENTIALS_ENDPOINT: Setting = Setting::new(
    "--iam-credentials-endpoint",
    ENV_IAM_CREDENTIALS_ENDPOINT,
    "IAM Credentials endpoint [default: https://iamcredentials.googleapis.com]",
);

/// The `gcp` rows, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &SERVICE_ACCOUNT,
    &PROJECT_ID,
    &SCOPES,
    &STS_ENDPOINT,
    &IAM_CREDENTIALS_ENDPOINT,
];

/// `gcp` flags (`--audience` is the pool provider:
/// //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER).
#[derive(Debug, Default, clap::Args)]
pub struct GcpArgs {
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

// === impl GcpConfig ===

impl GcpConfig {
    /// Reads the `gcp` settings, recording every bad one in `r`. The audience is a shared
    /// setting, checked as a pool provider there ([`crate::config::SharedRules`]); `common`
    /// is `None` when a shared setting was bad.
    pub fn load(args: &GcpArgs, common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self> {
        let audience = common.map(|c| c.audience.clone());
        let service_account = r.get(
            &SERVICE_ACCOUNT,
            args.service_account.as_deref(),
            check_email,
        );
        let project_id = required(
            r,
            &PROJECT_ID,
            args.project_id.as_deref(),
            "a project ID",
            |v| check_project_id(v).map(|()| v.to_owned()),
        );
        let scopes = r.get_or(
            &SCOPES,
            args.scopes.as_deref(),
            vec![CLOUD_PLATFORM.to_owned()],
            parse_scopes,
        );
        let sts_endpoint = r.get_or(
            &STS_ENDPOINT,
            args.sts_endpoint.as_deref(),
            DEFAULT_STS_ENDPOINT.to_owned(),
            |v| validate_endpoint_for(v, DEFAULT_STS_ENDPOINT).map_err(|e| e.to_string()),
        );
        let iam_credentials_endpoint = r.get_or(
            &IAM_CREDENTIALS_ENDPOINT,
            args.iam_credentials_endpoint.as_deref(),
            DEFAULT_IAM_CREDENTIALS_ENDPOINT.to_owned(),
            |v| {
                validate_endpoint_for(v, DEFAULT_IAM_CREDENTIALS_ENDPOINT)
                    .map_err(|e| e.to_string())
            },
        );
        let audience = audience?;
        Some(Self {
            // Checked by the shared reading already; `ok()` only keeps this free of a panic.
            project_number: parse_audience(&audience).ok()?,
            audience,
            service_account,
            project_id: project_id?,
            scopes,
            sts_endpoint,
            iam_credentials_endpoint,
        })
    }
}

/// [`parse_audience`] as the shared reading's audience check.
pub fn check_audience(v: &str) -> Result<(), String> {
    parse_audience(v).map(drop)
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
