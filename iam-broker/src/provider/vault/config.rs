//! `iam-broker vault` settings (`docs/protocols.md#vault`). Each reads flag >
//! `SPIFFE_IAM_BROKER_*` > Vault's own variable where one fits (`VAULT_ADDR`, `VAULT_NAMESPACE`,
//! `VAULT_CACERT`), so a pod spec written for Vault Agent carries over.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sidecar_runtime::ConfigError;
use sidecar_runtime::settings::{Reader, Setting};

use crate::config::{Common, is_loopback_name, path_setting, required, validate_endpoint_for};

/// Env: Vault's address (then `VAULT_ADDR`).
pub const ENV_VAULT_ADDR: &str = "SPIFFE_IAM_BROKER_VAULT_ADDR";
/// Env: the JWT auth method's mount path.
pub const ENV_AUTH_MOUNT: &str = "SPIFFE_IAM_BROKER_AUTH_MOUNT";
/// Env: the JWT auth role.
pub const ENV_ROLE: &str = "SPIFFE_IAM_BROKER_ROLE";
/// Env: the Vault Enterprise namespace (then `VAULT_NAMESPACE`).
pub const ENV_NAMESPACE: &str = "SPIFFE_IAM_BROKER_NAMESPACE";
/// Env: a PEM file with Vault's CA (then `VAULT_CACERT`).
pub const ENV_CA_FILE: &str = "SPIFFE_IAM_BROKER_CA_FILE";
/// Env: `true` or `force`.
pub const ENV_USE_AUTO_AUTH_TOKEN: &str = "SPIFFE_IAM_BROKER_USE_AUTO_AUTH_TOKEN";
/// Env: a file to keep the broker's token in (for tools reading `~/.vault-token`).
pub const ENV_TOKEN_SINK: &str = "SPIFFE_IAM_BROKER_TOKEN_SINK";
/// Env: comma-separated path prefixes the proxy forwards.
pub const ENV_PROXY_PATHS: &str = "SPIFFE_IAM_BROKER_PROXY_PATHS";
/// Env (Vault's name): the address.
pub const VAULT_ADDR: &str = "VAULT_ADDR";
/// Env (Vault's name): the namespace.
pub const VAULT_NAMESPACE: &str = "VAULT_NAMESPACE";
/// Env (Vault's name): the CA file.
pub const VAULT_CACERT: &str = "VAULT_CACERT";

/// The JWT-SVID audience a Vault role's `bound_audiences` conventionally names.
pub const DEFAULT_AUDIENCE: &str = "vault";
/// Vault's default mount path for the JWT auth method.
pub const DEFAULT_AUTH_MOUNT: &str = "jwt";
/// Every path of Vault's HTTP API.
pub const DEFAULT_PROXY_PATH: &str = "/v1";
/// What Vault's address looks like, in error messages.
const ADDR_EXAMPLE: &str = "https://vault.example.com:8200";
/// Vault's own port, so `VAULT_ADDR=http://127.0.0.1:8200` works for every client.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8200);

// === Settings ===

/// `--vault-addr`, then Vault's variable.
pub const ADDR: Setting = Setting::new(
    "--vault-addr",
    ENV_VAULT_ADDR,
    "Vault's address, https:// (plain http only to loopback) [required]",
)
.or_env(&[VAULT_ADDR]);
/// `--auth-mount`.
pub const AUTH_MOUNT: Setting = Setting::new(
    "--auth-mount",
    ENV_AUTH_MOUNT,
    "mount path of the JWT auth method [default: jwt]",
);
/// `--role`.
pub const ROLE: Setting = Setting::new(
    "--role",
    ENV_ROLE,
    "JWT auth role to log in with [required]",
);
/// `--namespace`, then Vault's variable.
pub const NAMESPACE: Setting = Setting::new(
    "--namespace",
    ENV_NAMESPACE,
    "Vault Enterprise namespace, sent as X-Vault-Namespace [default: none]",
)
.or_env(&[VAULT_NAMESPACE]);
/// `--ca-file`, then Vault's variable.
pub const CA_FILE: Setting = Setting::new(
    "--ca-file",
    ENV_CA_FILE,
    "PEM file with the CA of Vault's TLS certificate, trusted besides the system roots",
)
.or_env(&[VAULT_CACERT]);
/// `--use-auto-auth-token`.
pub const USE_AUTO_AUTH_TOKEN: Setting = Setting::new(
    "--use-auto-auth-token",
    ENV_USE_AUTO_AUTH_TOKEN,
    "true: add the broker's token where the client sends none; force: always [default: true]",
);
/// `--token-sink`.
pub const TOKEN_SINK: Setting = Setting::new(
    "--token-sink",
    ENV_TOKEN_SINK,
    "file to keep the broker's current token in, for tools reading ~/.vault-token [default: none]",
);
/// `--proxy-paths`.
pub const PROXY_PATHS: Setting = Setting::new(
    "--proxy-paths",
    ENV_PROXY_PATHS,
    "comma-separated path prefixes the proxy forwards, whole segments [default: /v1]",
);

/// The `vault` rows, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &ADDR,
    &AUTH_MOUNT,
    &ROLE,
    &NAMESPACE,
    &CA_FILE,
    &USE_AUTO_AUTH_TOKEN,
    &TOKEN_SINK,
    &PROXY_PATHS,
];

/// `vault` flags (`--audience` defaults to `vault`; `--listen` to 127.0.0.1:8200).
#[derive(Debug, Default, clap::Args)]
pub struct VaultArgs {
    /// Vault's address, https:// (plain http only to loopback) [env: VAULT_ADDR].
    #[arg(long)]
    pub vault_addr: Option<String>,
    /// Mount path of the JWT auth method [default: jwt].
    #[arg(long)]
    pub auth_mount: Option<String>,
    /// JWT auth role to log in with.
    #[arg(long)]
    pub role: Option<String>,
    /// Vault Enterprise namespace, sent as X-Vault-Namespace [env: VAULT_NAMESPACE].
    #[arg(long)]
    pub namespace: Option<String>,
    /// PEM file with the CA of Vault's TLS certificate, trusted besides the system roots
    /// [env: VAULT_CACERT].
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// `true`: add the broker's token to requests without X-Vault-Token; `force`: always
    /// replace the client's [default: true].
    #[arg(long)]
    pub use_auto_auth_token: Option<String>,
    /// File to keep the broker's current token in (mode 0600, replaced atomically), for tools
    /// that read ~/.vault-token [default: none].
    #[arg(long)]
    pub token_sink: Option<PathBuf>,
    /// Comma-separated path prefixes the proxy forwards, whole segments (`/v1/secret` lets
    /// `/v1/secret/data/x` through, not `/v1/secrets`); anything else is refused before it
    /// reaches Vault [default: /v1].
    #[arg(long)]
    pub proxy_paths: Option<String>,
}

/// When the proxy adds the broker's token (Vault Agent's `api_proxy.use_auto_auth_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoAuth {
    /// Only to requests without `X-Vault-Token`.
    IfMissing,
    /// To every request, replacing the client's.
    Force,
}

/// Validated `vault` settings.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Vault's address, no trailing slash.
    pub addr: String,
    /// The JWT auth mount path, no slashes at either end.
    pub auth_mount: String,
    /// The role.
    pub role: String,
    /// The namespace, if any.
    pub namespace: Option<String>,
    /// Where the extra CA came from, and its certificates.
    pub ca_file: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// When to add the broker's token.
    pub auto_auth: AutoAuth,
    /// The token sink file.
    pub token_sink: Option<PathBuf>,
    /// Path prefixes the proxy forwards, no trailing slash.
    pub proxy_paths: Vec<String>,
}

// === impl VaultConfig ===

impl VaultConfig {
    /// Reads the `vault` settings, recording every bad one in `r`. Vault's address must not be
    /// the broker's own listen address, taken from `common`; when a shared setting was bad
    /// (`None`), only the URL is checked, since the listen address may be the bad one.
    pub fn load(args: &VaultArgs, common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self> {
        let addr = required(
            r,
            &ADDR,
            args.vault_addr.as_deref(),
            "Vault's address",
            |v| match common {
                Some(common) => parse_addr(v, common.listen),
                None => validate_endpoint_for(v, ADDR_EXAMPLE).map_err(|e| e.to_string()),
            },
        );
        let auth_mount = r.get_or(
            &AUTH_MOUNT,
            args.auth_mount.as_deref(),
            DEFAULT_AUTH_MOUNT.to_owned(),
            parse_mount,
        );
        let role = required(r, &ROLE, args.role.as_deref(), "a JWT auth role", |v| {
            check_role(v).map(|()| v.to_owned())
        });
        let namespace = r.get(&NAMESPACE, args.namespace.as_deref(), parse_namespace);
        let ca_file = match path_setting(r, &CA_FILE, args.ca_file.as_deref()) {
            Some((setting, path)) => {
                let certs = read_ca_file(&path).map_err(|reason| {
                    ConfigError::new(setting, path.display().to_string(), reason)
                });
                r.check(certs).map(|certs| Some((path, certs)))
            }
            None => Some(None),
        };
        let auto_auth = r.get_or(
            &USE_AUTO_AUTH_TOKEN,
            args.use_auto_auth_token.as_deref(),
            AutoAuth::IfMissing,
            parse_auto_auth,
        );
        let token_sink = match path_setting(r, &TOKEN_SINK, args.token_sink.as_deref()) {
            Some((setting, path)) => {
                let sink = check_sink(&path).map_err(|reason| {
                    ConfigError::new(setting, path.display().to_string(), reason)
                });
                r.check(sink).map(Some)
            }
            None => Some(None),
        };
        let proxy_paths = r.get_or(
            &PROXY_PATHS,
            args.proxy_paths.as_deref(),
            vec![DEFAULT_PROXY_PATH.to_owned()],
            parse_proxy_paths,
        );
        Some(Self {
            addr: addr?,
            auth_mount,
            role: role?,
            namespace,
            ca_file: ca_file?,
            auto_auth,
            token_sink: token_sink?,
            proxy_paths,
        })
    }
}

/// Vault's address: `https://` (or `http://` to loopback), no path, and not the broker itself
/// (a sidecar that inherited the application's `VAULT_ADDR=http://127.0.0.1:8200` would
/// otherwise proxy to itself).
pub fn parse_addr(v: &str, listen: SocketAddr) -> Result<String, String> {
    let addr = validate_endpoint_for(v, ADDR_EXAMPLE).map_err(|e| e.to_string())?;
    let uri: axum::http::Uri = addr.parse().map_err(|e| format!("not a URL ({e})"))?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    let host = uri.host().unwrap_or("");
    let same_host =
        is_loopback_name(host) && (listen.ip().is_loopback() || listen.ip().is_unspecified());
    if same_host && port == listen.port() {
        return Err(format!(
            "this is the broker's own listen address ({listen}); VAULT_ADDR in the sidecar must name the real Vault"
        ));
    }
    Ok(addr)
}

/// A mount path like `jwt` or `spiffe/jwt`: URL-safe segments, no `..`.
pub fn parse_mount(v: &str) -> Result<String, String> {
    let mount = v.trim_matches('/');
    if mount.is_empty() {
        return Err("expected a mount path like jwt".to_owned());
    }
    check_path(mount)?;
    Ok(mount.to_owned())
}

/// A namespace like `team-a` or `team-a/child`.
pub fn parse_namespace(v: &str) -> Result<String, String> {
    let ns = v.trim_matches('/');
    if ns.is_empty() {
        return Err("expected a namespace like team-a".to_owned());
    }
    check_path(ns)?;
    Ok(ns.to_owned())
}

fn check_path(p: &str) -> Result<(), String> {
    if p.len() > 256 {
        return Err("longer than 256 characters".to_owned());
    }
    for segment in p.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("empty, '.' or '..' path segment".to_owned());
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("only letters, digits, '-', '_', '.' and '/' are allowed".to_owned());
        }
    }
    Ok(())
}

/// A role name: what Vault accepts in `auth/<mount>/role/<name>`.
pub fn check_role(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 128 {
        return Err("expected 1 to 128 characters".to_owned());
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err("only letters, digits, '-', '_', '.' and '@' are allowed".to_owned());
    }
    Ok(())
}

/// Path prefixes like `/v1/secret/data/app,/v1/auth/token/lookup-self`: each under `/v1`
/// (Vault's whole API is), in segments the proxy's path check can match exactly.
pub fn parse_proxy_paths(v: &str) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    for item in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let path = item.trim_end_matches('/');
        if path != DEFAULT_PROXY_PATH && !path.starts_with("/v1/") {
            return Err(format!(
                "{item:?}: expected a path under /v1, like /v1/secret"
            ));
        }
        check_path(&path[1..]).map_err(|r| format!("{item:?}: {r}"))?;
        paths.push(path.to_owned());
    }
    if paths.is_empty() {
        return Err("expected at least one path prefix, like /v1".to_owned());
    }
    Ok(paths)
}

/// `true` or `force` (Vault Agent's `false` would make the broker pointless).
pub fn parse_auto_auth(v: &str) -> Result<AutoAuth, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(AutoAuth::IfMissing),
        "force" => Ok(AutoAuth::Force),
        _ => Err(
            "expected true (add the token when the client sends none) or force (always replace it)"
                .to_owned(),
        ),
    }
}

fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(certs)
}

/// The sink's directory must exist (the file is written next to it and renamed into place).
fn check_sink(path: &std::path::Path) -> Result<PathBuf, String> {
    if path.file_name().is_none() {
        return Err("expected a file path".to_owned());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "127.0.0.1:8200".parse().unwrap()
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("https://vault.example.com:8200/", listen()).unwrap(),
            "https://vault.example.com:8200"
        );
        assert!(parse_addr("http://127.0.0.1:8201", listen()).is_ok());
        assert!(
            parse_addr("http://vault.example.com:8200", listen())
                .unwrap_err()
                .contains("loopback")
        );
        assert!(
            parse_addr("http://127.0.0.1:8200", listen())
                .unwrap_err()
                .contains("own listen address")
        );
        assert!(parse_addr("http://localhost:8200", listen()).is_err());
        assert!(parse_addr("https://vault.example.com/v1", listen()).is_err());
    }

    #[test]
    fn mounts_namespaces_roles() {
        assert_eq!(parse_mount("/spiffe/jwt/").unwrap(), "spiffe/jwt");
        assert!(parse_mount("").is_err());
        assert!(parse_mount("jwt/../token").is_err());
        assert!(parse_mount("jwt?x=1").is_err());
        assert_eq!(parse_namespace("team-a/").unwrap(), "team-a");
        assert!(check_role("web-app").is_ok());
        assert!(check_role("web app").is_err());
        assert!(check_role("").is_err());
    }

    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<crate::cli::Config, ConfigError> {
        load_all(args, vars).map_err(|mut e| e.0.remove(0))
    }

    fn load_all(
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> Result<crate::cli::Config, sidecar_runtime::settings::ConfigErrors> {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["iam-broker", "vault"].iter().chain(args)).unwrap();
        let env: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        crate::cli::Config::load(&cli, &env)
    }

    fn vault(c: &crate::cli::Config) -> &VaultConfig {
        match &c.provider {
            crate::cli::ProviderConfig::Vault(v) => v,
            other => panic!("not vault: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_vaults_own_variables() {
        let c = load(
            &["--role", "web"],
            &[
                (VAULT_ADDR, "https://vault.example.com:8200"),
                (VAULT_NAMESPACE, "team-a"),
            ],
        )
        .unwrap();
        assert_eq!(c.common.listen, "127.0.0.1:8200".parse().unwrap());
        assert_eq!(c.common.audience, "vault");
        let v = vault(&c);
        assert_eq!(v.addr, "https://vault.example.com:8200");
        assert_eq!(v.auth_mount, "jwt");
        assert_eq!(v.namespace.as_deref(), Some("team-a"));
        assert_eq!(v.auto_auth, AutoAuth::IfMissing);
        assert!(v.ca_file.is_none() && v.token_sink.is_none());
        assert_eq!(v.proxy_paths, ["/v1"]);
        // Ours beat Vault's.
        let c = load(
            &["--role", "web"],
            &[
                (VAULT_ADDR, "https://a.example"),
                (ENV_VAULT_ADDR, "https://b.example"),
            ],
        )
        .unwrap();
        assert_eq!(vault(&c).addr, "https://b.example");
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let addr = ("VAULT_ADDR", "https://vault.example.com");
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&["--role", "web"], &[], VAULT_ADDR),
            (&[], &[addr], ENV_ROLE),
            (
                &["--role", "web", "--vault-addr", "http://vault:8200"],
                &[],
                "--vault-addr",
            ),
            (
                &["--role", "web"],
                &[(VAULT_ADDR, "http://127.0.0.1:8200")],
                VAULT_ADDR,
            ),
            (
                &["--role", "web", "--use-auto-auth-token", "false"],
                &[addr],
                "--use-auto-auth-token",
            ),
            (
                &["--role", "web", "--auth-mount", "a/../b"],
                &[addr],
                "--auth-mount",
            ),
            (
                &["--role", "web", "--ca-file", "/nonexistent/ca.pem"],
                &[addr],
                "--ca-file",
            ),
            (
                &["--role", "web"],
                &[addr, (VAULT_CACERT, "/nonexistent/ca.pem")],
                VAULT_CACERT,
            ),
            (
                &["--role", "web", "--token-sink", "/nonexistent/dir/t"],
                &[addr],
                "--token-sink",
            ),
            (
                &["--role", "web", "--admin-listen", "127.0.0.1:8200"],
                &[addr],
                "--admin-listen",
            ),
            (
                &["--role", "web", "--proxy-paths", "/v2/x"],
                &[addr],
                "--proxy-paths",
            ),
            (
                &["--role", "web"],
                &[addr, (ENV_PROXY_PATHS, "/v1/secret/../sys")],
                ENV_PROXY_PATHS,
            ),
        ];
        for (args, vars, setting) in cases {
            let err = load(args, vars).unwrap_err();
            assert_eq!(&err.setting, setting, "{args:?} {vars:?}: {err}");
        }
    }

    #[test]
    fn proxy_paths() {
        assert_eq!(
            parse_proxy_paths("/v1/secret/data/app/, /v1/auth/token/lookup-self").unwrap(),
            ["/v1/secret/data/app", "/v1/auth/token/lookup-self"]
        );
        assert_eq!(parse_proxy_paths("/v1/").unwrap(), ["/v1"]);
        for bad in [
            "",
            ",",
            "v1/secret",
            "/v1x",
            "/sys",
            "/v1//x",
            "/v1/./x",
            "/v1/a b",
        ] {
            assert!(parse_proxy_paths(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auto_auth_modes() {
        assert_eq!(parse_auto_auth("true").unwrap(), AutoAuth::IfMissing);
        assert_eq!(parse_auto_auth("FORCE").unwrap(), AutoAuth::Force);
        assert!(parse_auto_auth("false").is_err());
    }
}
