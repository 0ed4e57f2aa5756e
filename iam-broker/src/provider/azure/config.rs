//! `iam-broker azure` settings (`docs/protocols.md#azure`). Each reads flag >
//! `SPIFFE_IAM_BROKER_*` > Azure's own variable where one exists (`AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID`, `AZURE_AUTHORITY_HOST`), so a pod spec written for azure-workload-identity
//! works unchanged. The identity header comes from `IDENTITY_HEADER`, the variable the SDKs read,
//! so one value in the pod spec serves both the broker and the application.

use std::path::PathBuf;

use sidecar_runtime::ConfigError;
use sidecar_runtime::settings::{Reader, Setting};

use crate::config::{path_setting, required, validate_endpoint_for};
use crate::secret::Secret;
use crate::token::{HeaderToken, check_token};

/// Env: the Entra tenant (then `AZURE_TENANT_ID`).
pub const ENV_TENANT_ID: &str = "SPIFFE_IAM_BROKER_TENANT_ID";
/// Env: the application (client) ID holding the federated credential (then `AZURE_CLIENT_ID`).
pub const ENV_CLIENT_ID: &str = "SPIFFE_IAM_BROKER_CLIENT_ID";
/// Env: the Entra authority (then `AZURE_AUTHORITY_HOST`).
pub const ENV_AUTHORITY_HOST: &str = "SPIFFE_IAM_BROKER_AUTHORITY_HOST";
/// Env: comma-separated resources clients may ask for (unset: any, up to the cap).
pub const ENV_RESOURCES: &str = "SPIFFE_IAM_BROKER_RESOURCES";
/// Env: a file holding the identity header (re-read for rotation).
pub const ENV_IDENTITY_HEADER_FILE: &str = "SPIFFE_IAM_BROKER_IDENTITY_HEADER_FILE";
/// Env (Azure's name): the tenant.
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// Env (Azure's name): the client ID.
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Env (Azure's name): the authority host.
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Env (the SDKs' name): the secret clients send as `X-IDENTITY-HEADER`.
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";

/// Entra's audience for federated credentials (`docs/protocols.md#entra-exchange`).
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The public cloud's authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Longest resource URI accepted.
pub const MAX_RESOURCE_LEN: usize = 256;

// === Settings ===

/// `--tenant-id`, then Azure's variable.
pub const TENANT_ID: Setting = Setting::new(
    "--tenant-id",
    ENV_TENANT_ID,
    "Entra tenant ID (GUID) or domain [required]",
)
.or_env(&[AZURE_TENANT_ID]);
/// `--client-id`, then Azure's variable.
pub const CLIENT_ID: Setting = Setting::new(
    "--client-id",
    ENV_CLIENT_ID,
    "application (client) ID holding the federated credential [required]",
)
.or_env(&[AZURE_CLIENT_ID]);
/// `--authority-host`, then Azure's variable.
pub const AUTHORITY_HOST: Setting = Setting::new(
    "--authority-host",
    ENV_AUTHORITY_HOST,
    "Entra authority [default: https://login.microsoftonline.com]",
)
.or_env(&[AZURE_AUTHORITY_HOST]);
/// `--resources`.
pub const RESOURCES: Setting = Setting::new(
    "--resources",
    ENV_RESOURCES,
    "comma-separated resources clients may get tokens for [default: any, at most 32 at once]",
);
/// `--identity-header-file`.
pub const IDENTITY_HEADER_FILE: Setting = Setting::new(
    "--identity-header-file",
    ENV_IDENTITY_HEADER_FILE,
    "file holding the X-IDENTITY-HEADER secret, re-read on change [default: IDENTITY_HEADER]",
);
/// `IDENTITY_HEADER`, the variable the SDKs read: a variable only, since a secret given as a
/// flag would show in the process list.
pub const IDENTITY_HEADER_VALUE: Setting = Setting::new(
    "(no flag)",
    IDENTITY_HEADER,
    "the X-IDENTITY-HEADER secret, as the SDKs read it [required unless a file is given]",
);

/// The `azure` rows, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &TENANT_ID,
    &CLIENT_ID,
    &AUTHORITY_HOST,
    &RESOURCES,
    &IDENTITY_HEADER_FILE,
    &IDENTITY_HEADER_VALUE,
];

/// `azure` flags (`--audience` defaults to api://AzureADTokenExchange).
#[derive(Debug, Default, clap::Args)]
pub struct AzureArgs {
    /// Entra tenant ID (GUID) or domain [env: AZURE_TENANT_ID].
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Application (client) ID of the app registration or user-assigned identity holding the
    /// federated credential [env: AZURE_CLIENT_ID].
    #[arg(long)]
    pub client_id: Option<String>,
    /// Entra authority (plain http only to loopback, for tests)
    /// [default: https://login.microsoftonline.com; env: AZURE_AUTHORITY_HOST].
    #[arg(long)]
    pub authority_host: Option<String>,
    /// Comma-separated resources clients may get tokens for [default: any, at most 32 at once].
    #[arg(long)]
    pub resources: Option<String>,
    /// File holding the X-IDENTITY-HEADER secret (re-read when it changes) [default: the
    /// IDENTITY_HEADER variable].
    #[arg(long)]
    pub identity_header_file: Option<PathBuf>,
}

/// Validated `azure` settings.
#[derive(Clone, Debug)]
pub struct AzureConfig {
    /// What the exchange needs.
    pub entra: AzureSettings,
    /// Resources clients may ask for (`None`: any, capped).
    pub resources: Option<Vec<String>>,
    /// The `X-IDENTITY-HEADER` secret.
    pub identity_header: HeaderToken,
}

/// Settings of the Entra exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureSettings {
    /// Tenant ID or domain.
    pub tenant_id: String,
    /// Application (client) ID.
    pub client_id: String,
    /// Authority, without a trailing slash.
    pub authority_host: String,
}

// === impl AzureConfig ===

impl AzureConfig {
    /// Reads the `azure` settings, recording every bad one in `r`.
    pub fn load(args: &AzureArgs, r: &mut Reader<'_>) -> Option<Self> {
        let tenant_id = required(
            r,
            &TENANT_ID,
            args.tenant_id.as_deref(),
            "a tenant ID",
            parse_tenant,
        );
        let client_id = required(
            r,
            &CLIENT_ID,
            args.client_id.as_deref(),
            "a client ID",
            parse_guid,
        );
        let authority_host = r.get_or(
            &AUTHORITY_HOST,
            args.authority_host.as_deref(),
            DEFAULT_AUTHORITY_HOST.to_owned(),
            |v| validate_endpoint_for(v, DEFAULT_AUTHORITY_HOST).map_err(|e| e.to_string()),
        );
        let resources = r.get(&RESOURCES, args.resources.as_deref(), parse_resources);
        let identity_header = identity_header(args, r);
        Some(Self {
            entra: AzureSettings {
                tenant_id: tenant_id?,
                client_id: client_id?,
                authority_host,
            },
            resources,
            identity_header: identity_header?,
        })
    }
}

/// The file option first (flag, then variable), else `IDENTITY_HEADER`: without it the SDKs do
/// not use the App Service protocol at all, so it is required. Explicit code rather than a
/// fallback row: the file and the value are two settings of different kinds.
fn identity_header(args: &AzureArgs, r: &mut Reader<'_>) -> Option<HeaderToken> {
    const WHAT: &str = "identity header";
    if let Some((setting, path)) = path_setting(
        r,
        &IDENTITY_HEADER_FILE,
        args.identity_header_file.as_deref(),
    ) {
        let shown = path.display().to_string();
        let checked = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|value| check_token(WHAT, value.trim()))
            .map(|()| HeaderToken::File(path))
            .map_err(|reason| ConfigError::new(setting, shown, reason));
        return r.check(checked);
    }
    let checked = match r.raw(&IDENTITY_HEADER_VALUE, None) {
        // Never echo the secret itself.
        Some(s) => check_token(WHAT, &s.value)
            .map(|()| HeaderToken::Value(Secret::new(s.value)))
            .map_err(|reason| ConfigError::new(IDENTITY_HEADER, "<redacted>", reason)),
        None => Err(ConfigError::new(
            IDENTITY_HEADER,
            "",
            "the identity header secret is required (IDENTITY_HEADER, as the SDKs read it, or \
             --identity-header-file)",
        )),
    };
    r.check(checked)
}

/// A GUID (`8-4-4-4-12` hex), lower-cased.
pub fn parse_guid(v: &str) -> Result<String, String> {
    let groups: Vec<&str> = v.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(v.to_ascii_lowercase())
    } else {
        Err("expected a GUID like 00000000-0000-0000-0000-000000000000".to_owned())
    }
}

/// A tenant GUID, or a verified domain (`contoso.onmicrosoft.com`): it becomes a URL path
/// segment, so nothing else is accepted.
pub fn parse_tenant(v: &str) -> Result<String, String> {
    if let Ok(guid) = parse_guid(v) {
        return Ok(guid);
    }
    let domain_ok = v.contains('.')
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if domain_ok {
        Ok(v.to_ascii_lowercase())
    } else {
        Err("expected a tenant GUID or a domain like contoso.onmicrosoft.com".to_owned())
    }
}

/// A resource URI as clients send it (`https://storage.azure.com`, `api://app-id`): printable
/// ASCII without spaces, bounded, with a scheme; `/.default` is not part of it.
pub fn check_resource(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_RESOURCE_LEN {
        return Err(format!(
            "a resource must be 1 to {MAX_RESOURCE_LEN} characters"
        ));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a resource must be printable ASCII without spaces".to_owned());
    }
    if !v.contains(':') {
        return Err("a resource is a URI such as https://storage.azure.com".to_owned());
    }
    if v.ends_with("/.default") {
        return Err("give the resource without /.default".to_owned());
    }
    Ok(())
}

fn parse_resources(v: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err("expected a comma-separated list of resource URIs".to_owned());
    }
    for r in &list {
        check_resource(r).map_err(|e| format!("{r:?}: {e}"))?;
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_tenants() {
        assert_eq!(
            parse_guid("0A1B2C3D-0000-0000-0000-00000000000F").unwrap(),
            "0a1b2c3d-0000-0000-0000-00000000000f"
        );
        assert!(parse_guid("0a1b2c3d-0000-0000-0000-00000000000").is_err());
        assert!(parse_guid("not-a-guid").is_err());
        assert_eq!(
            parse_tenant("Contoso.onmicrosoft.com").unwrap(),
            "contoso.onmicrosoft.com"
        );
        assert!(parse_tenant("../common").is_err());
        assert!(parse_tenant("common").is_err());
    }

    #[test]
    fn resources() {
        assert!(check_resource("https://storage.azure.com").is_ok());
        assert!(check_resource("api://0a1b2c3d-0000-0000-0000-000000000001").is_ok());
        assert!(check_resource("https://vault.azure.net/.default").is_err());
        assert!(check_resource("storage").is_err());
        assert!(check_resource("https://a b").is_err());
        assert!(check_resource(&format!("https://{}", "a".repeat(300))).is_err());
        assert_eq!(
            parse_resources(" https://a.example , https://b.example,").unwrap(),
            ["https://a.example", "https://b.example"]
        );
        assert!(parse_resources(",").is_err());
    }
}
