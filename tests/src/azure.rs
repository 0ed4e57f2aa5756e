//! Azure peers for the `iam-broker azure` tests: a strict fake of Entra ID's token endpoint and
//! the broker process. There is no local Entra ID to install, so the fake checks what Entra
//! checks on a client-credentials request with a federated client assertion (docs/protocols.md#azure):
//!
//! - `POST /{tenant}/oauth2/v2.0/token`, form-encoded, for the configured tenant;
//! - `grant_type=client_credentials`, the configured `client_id`, exactly one scope ending in
//!   `/.default`, `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`;
//! - the assertion: signature against the JWKS found through the issuer's OIDC discovery
//!   document (the dev agent's, fetched on every call as Entra would after a key rotation),
//!   `exp`, and the federated credential's exact `iss`, `sub` and single audience.
//!
//! Refusals use Entra's error document (`error`, `error_description` starting with the AADSTS
//! code, `error_codes`, `timestamp`, `trace_id`, `correlation_id`). It counts calls per scope,
//! remembers every token it issued (so tests can grep logs for them), and can be told to answer
//! 5xx, throttle, or refuse the assertion. It serves HTTPS with a certificate from a
//! [`TestCa`], as Entra does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::aws::{Broker, FakeHttps, TestCa, form, unix_now, unix_time};
use crate::{Proc, bin, free_port, http, output, python_with, root, wait_until};

/// The tenant every test uses.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The application (client) ID holding the federated credential.
pub const CLIENT_ID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
/// Entra's audience for federated credentials.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
/// RFC 7523's assertion type.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A federated identity credential on the app registration: what the assertion must match.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    /// `iss`, exactly (the OIDC discovery URL's issuer).
    pub issuer: String,
    /// `sub`, exactly (the SPIFFE ID).
    pub subject: String,
    /// The one audience.
    pub audience: String,
}

/// What the fake does with the next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntraFault {
    /// Verify and answer.
    None,
    /// Answer this 5xx with an HTML page (a front end in trouble).
    Status(u16),
    /// 429 with Entra's throttling error.
    Throttle,
    /// Refuse every assertion: no matching federated identity record (AADSTS70021).
    InvalidAssertion,
    /// Refuse the assertion as outside its valid time range (AADSTS700024: Entra's answer to an
    /// expired or not-yet-valid JWT, e.g. across clock skew).
    AssertionOutOfTime,
}

/// One token request as the fake saw it.
#[derive(Clone, Debug)]
pub struct EntraCall {
    /// `scope`.
    pub scope: String,
    /// The answer's status.
    pub status: u16,
    /// The AADSTS code of a refusal (0 for success).
    pub code: u32,
    /// The client assertion presented (a JWT-SVID; empty if none).
    pub assertion: String,
    /// When it was answered (Unix seconds).
    pub at: f64,
}

#[derive(Debug)]
struct State {
    tenant: String,
    client_id: String,
    federated: FederatedCredential,
    /// The fault, and for how many more calls (`None`: until changed).
    fault: Mutex<(EntraFault, Option<u32>)>,
    lifetime_secs: AtomicU64,
    calls: Mutex<Vec<EntraCall>>,
    issued: Mutex<Vec<String>>,
    next: AtomicU64,
}

/// The fake token endpoint, on its own thread and runtime. Stops (connection refused from
/// then on) on drop.
#[derive(Debug)]
pub struct FakeEntra {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    _server: FakeHttps,
}

impl FakeEntra {
    /// Serves HTTPS with `ca`'s certificate on a free port for `federated`.
    pub fn start(ca: &TestCa, federated: FederatedCredential) -> Self {
        Self::start_on(free_port(), ca, federated)
    }

    /// [`FakeEntra::start`] on `port` (e.g. the one a broker already points at).
    pub fn start_on(port: u16, ca: &TestCa, federated: FederatedCredential) -> Self {
        let state = Arc::new(State {
            tenant: TENANT.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            federated,
            fault: Mutex::new((EntraFault::None, None)),
            lifetime_secs: AtomicU64::new(3600),
            calls: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        });
        let s = state.clone();
        let server = FakeHttps::start("fake-entra", port, ca, move |method, uri, headers, body| {
            handle(&s, method, uri, headers, body)
        });
        Self {
            addr: server.addr,
            state,
            _server: server,
        }
    }

    /// `https://127.0.0.1:PORT` (the authority host).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Applies `fault` from now on.
    pub fn set_fault(&self, fault: EntraFault) {
        *self.state.fault.lock().unwrap() = (fault, None);
    }

    /// Applies `fault` to the next `calls` token requests only.
    pub fn fault_next(&self, calls: u32, fault: EntraFault) {
        *self.state.fault.lock().unwrap() = (fault, Some(calls));
    }

    /// Tokens issued from now on live `secs`.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Every token request, oldest first.
    pub fn calls(&self) -> Vec<EntraCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Token requests per scope.
    pub fn calls_by_scope(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for c in self.calls() {
            *by.entry(c.scope).or_default() += 1;
        }
        by
    }

    /// Every access token issued.
    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }
}

/// Entra's error document.
fn aadsts(status: u16, error: &str, code: u32, description: &str) -> Response {
    let body = serde_json::json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: 00000000-0000-0000-0000-000000000001 \
             Correlation ID: 00000000-0000-0000-0000-000000000002 Timestamp: 2026-01-01 00:00:00Z"
        ),
        "error_codes": [code],
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000001",
        "correlation_id": "00000000-0000-0000-0000-000000000002",
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn handle(s: &State, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let path = uri.path();
    let tenant = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"));
    let Some(tenant) = tenant else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response();
    }
    let params = form(body);
    let param = |k: &str| {
        let mut values = params
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone());
        match (values.next(), values.next()) {
            (Some(v), None) => Some(v),
            _ => None, // missing or repeated
        }
    };
    let scope = param("scope").unwrap_or_default();
    let (response, status, code) = decide(s, tenant, headers, &param, &scope);
    s.calls.lock().unwrap().push(EntraCall {
        scope,
        status,
        code,
        assertion: param("client_assertion").unwrap_or_default(),
        at: unix_time(),
    });
    response
}

type Decision = (Response, u16, u32);

fn refuse(status: u16, error: &str, code: u32, description: &str) -> Decision {
    (aadsts(status, error, code, description), status, code)
}

fn decide(
    s: &State,
    tenant: &str,
    headers: &HeaderMap,
    param: &dyn Fn(&str) -> Option<String>,
    scope: &str,
) -> Decision {
    let fault = {
        let mut fault = s.fault.lock().unwrap();
        let now = fault.0;
        match &mut fault.1 {
            Some(left) if *left <= 1 => *fault = (EntraFault::None, None),
            Some(left) => *left -= 1,
            None => {}
        }
        now
    };
    match fault {
        EntraFault::None => {}
        EntraFault::Status(code) => {
            let r = (
                StatusCode::from_u16(code).unwrap(),
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Service unavailable (injected)</body></html>",
            )
                .into_response();
            return (r, code, 0);
        }
        EntraFault::Throttle => {
            return refuse(
                429,
                "temporarily_unavailable",
                50196,
                "The server terminated an operation because it encountered a client request loop.",
            );
        }
        EntraFault::InvalidAssertion => {
            return refuse(
                400,
                "invalid_client",
                70021,
                "No matching federated identity record found for presented assertion.",
            );
        }
        EntraFault::AssertionOutOfTime => {
            return refuse(
                400,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            );
        }
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return refuse(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    }
    if tenant != s.tenant {
        return refuse(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if param("grant_type").as_deref() != Some("client_credentials") {
        return refuse(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if param("client_id").as_deref() != Some(s.client_id.as_str()) {
        return refuse(
            400,
            "unauthorized_client",
            700016,
            "Application with identifier was not found in the directory.",
        );
    }
    let one_default_scope =
        !scope.is_empty() && !scope.contains(' ') && scope.ends_with("/.default");
    if !one_default_scope {
        return refuse(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a \
             scope value with /.default suffixed to the resource identifier.",
        );
    }
    if param("client_assertion_type").as_deref() != Some(ASSERTION_TYPE) {
        return refuse(
            400,
            "invalid_request",
            700023,
            "Client assertion type is invalid.",
        );
    }
    let Some(assertion) = param("client_assertion") else {
        return refuse(
            400,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required.",
        );
    };
    if let Err((code, description)) = verify_assertion(&s.federated, &assertion) {
        return refuse(400, "invalid_client", code, &description);
    }
    let n = s.next.fetch_add(1, Ordering::SeqCst);
    let token = format!("fake-entra-at-{n}-{}", unix_now());
    s.issued.lock().unwrap().push(token.clone());
    let lifetime = s.lifetime_secs.load(Ordering::SeqCst);
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    let r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    (r, 200, 0)
}

/// What Entra checks of a federated client assertion, with its codes.
fn verify_assertion(fed: &FederatedCredential, jwt: &str) -> Result<(), (u32, String)> {
    use workload_client::spiffe::{JwtBundle, JwtBundleSet, TrustDomain};
    let claims = claims(jwt).ok_or((50027, "JWT token is invalid or malformed.".to_owned()))?;
    let iss = claims["iss"].as_str().unwrap_or("");
    if iss != fed.issuer {
        return Err((
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'."
            ),
        ));
    }
    // Signature and exp against the issuer's published keys (and our audience).
    let jwks = discover_jwks(&fed.issuer).map_err(|e| {
        (
            700210,
            format!("Failed to fetch the issuer's signing keys: {e}"),
        )
    })?;
    let sub = claims["sub"].as_str().unwrap_or("");
    let td = sub
        .strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .and_then(|td| TrustDomain::new(td).ok())
        .ok_or((50027, "JWT token is invalid or malformed.".to_owned()))?;
    let bundle = JwtBundle::from_jwt_authorities(td, jwks.as_bytes())
        .map_err(|e| (700210, format!("The issuer's JWKS is invalid: {e}")))?;
    let mut set = JwtBundleSet::new();
    set.add_bundle(bundle);
    let verified = workload_client::validate_jwt_svid(
        jwt,
        &fed.audience,
        &set,
        &workload_client::TrustDomainPolicy::AnyWithBundle,
    );
    match verified {
        Ok(_) => {}
        Err(workload_client::ValidationError::Expired) => {
            return Err((
                700024,
                "Client assertion is not within its valid time range.".to_owned(),
            ));
        }
        Err(workload_client::ValidationError::AudienceMismatch { .. }) => {
            return Err((
                700212,
                "No matching federated identity record found for presented assertion audience."
                    .to_owned(),
            ));
        }
        Err(e) => {
            return Err((
                700027,
                format!("Client assertion failed signature validation ({e})."),
            ));
        }
    }
    if sub != fed.subject {
        return Err((
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'."
            ),
        ));
    }
    Ok(())
}

/// The JWT's claims, unverified (to find the issuer and trust domain before verifying).
pub(crate) fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `{issuer}/.well-known/openid-configuration` → `jwks_uri` → the JWKS (plain http to loopback:
/// the dev agent's discovery endpoint).
pub fn discover_jwks(issuer: &str) -> Result<String, String> {
    let get = |url: &str| -> Result<String, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// loopback issuers in tests"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr: SocketAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
        match http(addr, "GET", &format!("/{path}")) {
            Some((200, body)) => Ok(body),
            Some((status, _)) => Err(format!("{url}: HTTP {status}")),
            None => Err(format!("{url}: no answer")),
        }
    };
    let discovery: serde_json::Value =
        serde_json::from_str(&get(&format!("{issuer}/.well-known/openid-configuration"))?)
            .map_err(|e| e.to_string())?;
    if discovery["issuer"] != issuer {
        return Err("the discovery document names another issuer".to_owned());
    }
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .ok_or("no jwks_uri in the discovery document")?;
    get(jwks_uri)
}

/// What an OIDC relying party (Vault's JWT auth) checks of a JWT-SVID before its own bindings:
/// `iss` is `issuer`, the signature verifies with the JWKS found through the issuer's discovery
/// document, `exp`/`nbf` hold, and `aud` contains `audience`. Returns the claims.
pub fn verify_with_discovery(
    issuer: &str,
    jwt: &str,
    audience: &str,
) -> Result<serde_json::Value, OidcRefusal> {
    use workload_client::spiffe::{JwtBundle, JwtBundleSet, TrustDomain};
    let claims = claims(jwt).ok_or(OidcRefusal::Malformed)?;
    if claims["iss"] != issuer {
        return Err(OidcRefusal::Issuer(claims["iss"].to_string()));
    }
    let jwks = discover_jwks(issuer).map_err(OidcRefusal::Keys)?;
    let td = claims["sub"]
        .as_str()
        .and_then(|s| s.strip_prefix("spiffe://"))
        .and_then(|r| r.split('/').next())
        .and_then(|td| TrustDomain::new(td).ok())
        .ok_or(OidcRefusal::Malformed)?;
    let bundle = JwtBundle::from_jwt_authorities(td, jwks.as_bytes())
        .map_err(|e| OidcRefusal::Keys(e.to_string()))?;
    let mut set = JwtBundleSet::new();
    set.add_bundle(bundle);
    workload_client::validate_jwt_svid(
        jwt,
        audience,
        &set,
        &workload_client::TrustDomainPolicy::AnyWithBundle,
    )
    .map_err(OidcRefusal::Invalid)?;
    Ok(claims)
}

/// Why [`verify_with_discovery`] refused a token.
#[derive(Debug)]
pub enum OidcRefusal {
    /// Not a JWT with a SPIFFE ID subject.
    Malformed,
    /// Another issuer (the claim as JSON).
    Issuer(String),
    /// The discovery document or JWKS could not be fetched or read.
    Keys(String),
    /// Signature, time or audience.
    Invalid(workload_client::ValidationError),
}

// === the broker ===

/// Starts `iam-broker <provider_args…>` (the caller names the subcommand and its settings)
/// against the agent at `socket` with listeners on free ports, in a clean environment plus
/// `env`, and waits until both listeners accept connections.
pub fn start_broker(
    dir: &Path,
    socket: &str,
    provider_args: &[&str],
    env: &[(&str, &str)],
) -> Broker {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    start_broker_at(&bin("iam-broker"), listen, dir, socket, provider_args, env)
}

/// [`start_broker`] running `program` (the workspace's `iam-broker`, or a link to it registered
/// as its own workload) serving on `listen` (e.g. the address its clients keep using across a
/// restart).
pub fn start_broker_at(
    program: &Path,
    listen: SocketAddr,
    dir: &Path,
    socket: &str,
    provider_args: &[&str],
    env: &[(&str, &str)],
) -> Broker {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .args(provider_args)
        .args(["--socket", socket])
        .args(["--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()]);
    let mut proc = Proc::spawn("iam-broker", cmd, dir);
    wait_until("iam-broker listeners", Duration::from_secs(20), || {
        proc.assert_running();
        http(admin, "GET", "/healthz").is_some_and(|(s, _)| s == 200)
            && std::net::TcpStream::connect(listen).is_ok()
    });
    Broker {
        proc,
        listen,
        admin,
    }
}

/// A fake Entra (its own CA, written to `dir/entra-ca.pem` for the broker's `SSL_CERT_FILE`)
/// holding `federated`, and `iam-broker azure` in front of it against the agent at `socket`,
/// with `IDENTITY_HEADER=identity_header`, plus `args` and `env`.
pub fn start_with_entra(
    dir: &Path,
    socket: &str,
    federated: &FederatedCredential,
    identity_header: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (FakeEntra, Broker) {
    let entra = start_entra(dir, federated);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = start_entra_broker_at(
        &bin("iam-broker"),
        listen,
        dir,
        socket,
        &entra,
        identity_header,
        args,
        env,
    );
    (entra, broker)
}

/// The fake Entra [`start_with_entra`] starts, its CA written to `dir/entra-ca.pem`.
pub fn start_entra(dir: &Path, federated: &FederatedCredential) -> FakeEntra {
    let ca = TestCa::new();
    std::fs::write(dir.join("entra-ca.pem"), &ca.ca_pem).unwrap();
    FakeEntra::start(&ca, federated.clone())
}

/// The broker [`start_with_entra`] starts (`program`: `iam-broker` or a link to it), in front
/// of its `entra` (whose CA it wrote into `dir`), serving on `listen`: to start it again where
/// its clients keep looking.
#[allow(clippy::too_many_arguments)] // the settings of one process, all needed
pub fn start_entra_broker_at(
    program: &Path,
    listen: SocketAddr,
    dir: &Path,
    socket: &str,
    entra: &FakeEntra,
    identity_header: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Broker {
    let ca_file = dir.join("entra-ca.pem");
    let authority = entra.url();
    let mut all = vec![
        "azure",
        "--tenant-id",
        TENANT,
        "--client-id",
        CLIENT_ID,
        "--authority-host",
        &authority,
    ];
    all.extend(args);
    let mut all_env = vec![
        ("IDENTITY_HEADER", identity_header),
        ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
    ];
    all_env.extend(env);
    start_broker_at(program, listen, dir, socket, &all, &all_env)
}

// === the real client ===

/// Runs tests/py/azure_token.py (`managed` or `default`) for `scopes` with only
/// `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` set (plus PATH and an empty HOME): the SDK's
/// documented App Service configuration.
pub fn azure_identity(
    dir: &Path,
    broker: &Broker,
    header: &str,
    kind: &str,
    scopes: &[&str],
) -> Result<serde_json::Value, String> {
    let python = python_with(&["azure.identity"]);
    let home = dir.join(format!("home-{}", free_port()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(python)
        .arg(root().join("tests/py/azure_token.py"))
        .arg(kind)
        .args(scopes)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env(
            "IDENTITY_ENDPOINT",
            format!("http://{}/msi/token", broker.listen),
        )
        .env("IDENTITY_HEADER", header);
    let out = output(cmd);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
