//! Google Cloud peers for the `iam-broker gcp` tests: a strict fake of Google STS's token
//! exchange and of IAM Credentials' `generateAccessToken`, on one HTTPS server. There is no
//! local Google STS to install, so the fake checks what they check (docs/protocols.md#gcp):
//!
//! - STS `POST /v1/token`: the token-exchange grant, `requested_token_type` access token,
//!   `subject_token_type` JWT, the pool provider as `audience`, a scope; the subject token's
//!   signature against the JWKS found through the provider's issuer's OIDC discovery, `exp`,
//!   `iss`, and `aud` equal to the provider (with or without `https:`). Refusals are
//!   `{error, error_description}` (`invalid_grant`, `invalid_request`).
//! - IAM Credentials `POST /v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken`: a
//!   Bearer token this STS issued and not expired, the account the principal may impersonate,
//!   JSON `{"scope": [...], "lifetime"}`; answers `{accessToken, expireTime}` with `expireTime`
//!   as `%Y-%m-%dT%H:%M:%SZ`; refusals are `{"error":{code,message,status}}`.
//!
//! It counts calls, remembers issued tokens, and can answer 5xx or refuse the subject token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::aws::Broker;
use crate::aws::{FakeHttps, TestCa, form, rfc3339, unix_now, unix_time};
use crate::azure::{claims, discover_jwks, start_broker_at};
use crate::{bin, free_port, output, python_with, root};

/// The project number in the pool provider.
pub const PROJECT_NUMBER: &str = "123456789012";
/// The pool provider (STS audience, JWT-SVID audience).
pub const PROVIDER: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/spiffe-pool/providers/spire";
/// The project ID.
pub const PROJECT_ID: &str = "suite-tests-project";
/// The service account the federated principal may impersonate.
pub const SERVICE_ACCOUNT: &str = "app@suite-tests-project.iam.gserviceaccount.com";

/// What the fake does with the next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoogleFault {
    /// Verify and answer.
    None,
    /// Answer this 5xx (both APIs).
    Status(u16),
    /// STS refuses the subject token (`invalid_grant`).
    InvalidGrant,
}

/// One call as the fake saw it.
#[derive(Clone, Debug)]
pub struct GoogleCall {
    /// `sts` or `iamcredentials`.
    pub api: &'static str,
    /// STS `scope`, or the scopes asked of `generateAccessToken` joined by spaces.
    pub scope: String,
    /// The answer's status.
    pub status: u16,
    /// When it was answered (Unix seconds).
    pub at: f64,
}

#[derive(Debug)]
struct State {
    issuer: String,
    fault: Mutex<GoogleFault>,
    lifetime_secs: AtomicU64,
    calls: Mutex<Vec<GoogleCall>>,
    /// STS tokens and their expiry (unix).
    sts_issued: Mutex<Vec<(String, u64)>>,
    sa_issued: Mutex<Vec<String>>,
    next: AtomicU64,
}

/// The fake STS + IAM Credentials, on its own thread and runtime; stops on drop.
#[derive(Debug)]
pub struct FakeGoogle {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    _server: FakeHttps,
}

impl FakeGoogle {
    /// Serves HTTPS with `ca`'s certificate, trusting JWTs from `issuer` (the pool provider's
    /// issuer URI).
    pub fn start(ca: &TestCa, issuer: &str) -> Self {
        let state = Arc::new(State {
            issuer: issuer.to_owned(),
            fault: Mutex::new(GoogleFault::None),
            lifetime_secs: AtomicU64::new(3600),
            calls: Mutex::new(Vec::new()),
            sts_issued: Mutex::new(Vec::new()),
            sa_issued: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        });
        let s = state.clone();
        let server = FakeHttps::start(
            "fake-google",
            free_port(),
            ca,
            move |method, uri, headers, body| handle(&s, method, uri, headers, body),
        );
        Self {
            addr: server.addr,
            state,
            _server: server,
        }
    }

    /// `https://127.0.0.1:PORT` (both endpoints).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Applies `fault` from now on.
    pub fn set_fault(&self, fault: GoogleFault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// Tokens issued from now on live `secs`.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Every call, oldest first.
    pub fn calls(&self) -> Vec<GoogleCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Calls per `(api, scope)`.
    pub fn calls_by(&self) -> BTreeMap<(String, String), usize> {
        let mut by = BTreeMap::new();
        for c in self.calls() {
            *by.entry((c.api.to_owned(), c.scope)).or_default() += 1;
        }
        by
    }

    /// Every access token issued (STS and service account).
    pub fn issued(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .state
            .sts_issued
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        all.extend(self.state.sa_issued.lock().unwrap().iter().cloned());
        all
    }
}

fn json(status: u16, body: &serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    )
}

fn google_error(code: u16, status: &str, message: &str) -> Response {
    json(
        code,
        &serde_json::json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

fn handle(s: &State, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let path = uri.path();
    if path == "/v1/token" && method == Method::POST {
        let params = form(body);
        let scope = params
            .iter()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let response = sts(s, headers, &params);
        s.calls.lock().unwrap().push(GoogleCall {
            api: "sts",
            scope,
            status: response.status().as_u16(),
            at: unix_time(),
        });
        return response;
    }
    if let Some(account) = path
        .strip_prefix("/v1/projects/-/serviceAccounts/")
        .and_then(|p| p.strip_suffix(":generateAccessToken"))
        && method == Method::POST
    {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let scope = v["scope"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let response = generate_access_token(s, account, headers, &v);
        s.calls.lock().unwrap().push(GoogleCall {
            api: "iamcredentials",
            scope,
            status: response.status().as_u16(),
            at: unix_time(),
        });
        return response;
    }
    google_error(404, "NOT_FOUND", "not found")
}

fn sts(s: &State, headers: &HeaderMap, params: &[(String, String)]) -> Response {
    match *s.fault.lock().unwrap() {
        GoogleFault::None => {}
        GoogleFault::Status(code) => {
            return (StatusCode::from_u16(code).unwrap(), "Service Unavailable").into_response();
        }
        GoogleFault::InvalidGrant => {
            return oauth_error(
                400,
                "invalid_grant",
                "The audience in ID Token [x] does not match the expected audience (injected).",
            );
        }
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(400, "invalid_request", "Unsupported content type.");
    }
    let one = |k: &str| {
        let mut it = params
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str());
        match (it.next(), it.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        }
    };
    let expect = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
    ];
    for (k, v) in expect {
        if one(k) != Some(v) {
            return oauth_error(
                400,
                "invalid_request",
                &format!("Invalid value for \"{k}\"."),
            );
        }
    }
    if one("audience") != Some(PROVIDER) {
        return oauth_error(
            400,
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid.",
        );
    }
    if one("scope").is_none_or(str::is_empty) {
        return oauth_error(400, "invalid_scope", "A scope is required.");
    }
    let Some(token) = one("subject_token") else {
        return oauth_error(400, "invalid_request", "Missing subject_token.");
    };
    if let Err(description) = verify_subject_token(&s.issuer, token) {
        return oauth_error(400, "invalid_grant", &description);
    }
    let n = s.next.fetch_add(1, Ordering::SeqCst);
    let lifetime = s.lifetime_secs.load(Ordering::SeqCst);
    let access = format!("ya29.fake-sts-{n}-{}", unix_now());
    s.sts_issued
        .lock()
        .unwrap()
        .push((access.clone(), unix_now() + lifetime));
    json(
        200,
        &serde_json::json!({
            "access_token": access,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": lifetime,
        }),
    )
}

/// What STS checks of an OIDC subject token.
fn verify_subject_token(issuer: &str, jwt: &str) -> Result<(), String> {
    use workload_client::spiffe::{JwtBundle, JwtBundleSet, TrustDomain};
    let claims = claims(jwt).ok_or("Unable to parse the ID Token.")?;
    if claims["iss"] != issuer {
        return Err(format!(
            "The issuer in ID Token {} does not match the expected ones.",
            claims["iss"]
        ));
    }
    let jwks = discover_jwks(issuer).map_err(|e| format!("Failed to fetch the JWKS: {e}"))?;
    let sub = claims["sub"].as_str().unwrap_or("");
    let td = sub
        .strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .and_then(|td| TrustDomain::new(td).ok())
        .ok_or("Unable to parse the ID Token.")?;
    let bundle = JwtBundle::from_jwt_authorities(td, jwks.as_bytes()).map_err(|e| e.to_string())?;
    let mut set = JwtBundleSet::new();
    set.add_bundle(bundle);
    // `aud` must be the provider, with or without `https:`.
    let aud = if claims["aud"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == &format!("https:{PROVIDER}")))
        || claims["aud"] == format!("https:{PROVIDER}")
    {
        format!("https:{PROVIDER}")
    } else {
        PROVIDER.to_owned()
    };
    workload_client::validate_jwt_svid(
        jwt,
        &aud,
        &set,
        &workload_client::TrustDomainPolicy::AnyWithBundle,
    )
    .map(|_| ())
    .map_err(|e| match e {
        workload_client::ValidationError::Expired => "The ID Token has expired.".to_owned(),
        workload_client::ValidationError::AudienceMismatch { .. } => {
            "The audience in ID Token does not match the expected audience.".to_owned()
        }
        other => format!("Invalid ID Token signature or format: {other}."),
    })
}

fn generate_access_token(
    s: &State,
    account: &str,
    headers: &HeaderMap,
    body: &serde_json::Value,
) -> Response {
    if let GoogleFault::Status(code) = *s.fault.lock().unwrap() {
        return (StatusCode::from_u16(code).unwrap(), "Service Unavailable").into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = bearer.is_some_and(|t| {
        s.sts_issued
            .lock()
            .unwrap()
            .iter()
            .any(|(issued, exp)| issued == t && *exp > unix_now())
    });
    if !valid {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    }
    if account != SERVICE_ACCOUNT {
        return google_error(
            403,
            "PERMISSION_DENIED",
            &format!(
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist): {account}"
            ),
        );
    }
    let scopes_ok = body["scope"]
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(serde_json::Value::is_string));
    if !scopes_ok {
        return google_error(400, "INVALID_ARGUMENT", "Scope required.");
    }
    if let Some(l) = body.get("lifetime")
        && !l.as_str().is_some_and(|l| l.ends_with('s'))
    {
        return google_error(400, "INVALID_ARGUMENT", "Invalid lifetime.");
    }
    let n = s.next.fetch_add(1, Ordering::SeqCst);
    let lifetime = s.lifetime_secs.load(Ordering::SeqCst);
    let access = format!("ya29.fake-sa-{n}-{}", unix_now());
    s.sa_issued.lock().unwrap().push(access.clone());
    json(
        200,
        &serde_json::json!({ "accessToken": access, "expireTime": rfc3339(unix_now() + lifetime) }),
    )
}

// === the broker ===

/// A fake Google (its own CA, written to `dir/google-ca.pem` for the broker's `SSL_CERT_FILE`)
/// trusting `issuer`, `before` applied to it, and `iam-broker gcp` in front of it (both
/// endpoints) against the agent at `socket`, plus `args` and `env`.
pub fn start_with_google(
    dir: &Path,
    socket: &str,
    issuer: &str,
    args: &[&str],
    env: &[(&str, &str)],
    before: impl FnOnce(&FakeGoogle),
) -> (FakeGoogle, Broker) {
    let google = start_google(dir, issuer);
    before(&google);
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker =
        start_google_broker_at(&bin("iam-broker"), listen, dir, socket, &google, args, env);
    (google, broker)
}

/// The fake Google [`start_with_google`] starts, trusting `issuer`, its CA written to
/// `dir/google-ca.pem`.
pub fn start_google(dir: &Path, issuer: &str) -> FakeGoogle {
    let ca = TestCa::new();
    std::fs::write(dir.join("google-ca.pem"), &ca.ca_pem).unwrap();
    FakeGoogle::start(&ca, issuer)
}

/// The broker [`start_with_google`] starts (`program`: `iam-broker` or a link to it), in front
/// of its `google` (whose CA it wrote into `dir`), serving on `listen`: to start it again where
/// its clients keep looking.
pub fn start_google_broker_at(
    program: &Path,
    listen: SocketAddr,
    dir: &Path,
    socket: &str,
    google: &FakeGoogle,
    args: &[&str],
    env: &[(&str, &str)],
) -> Broker {
    let ca_file = dir.join("google-ca.pem");
    let url = google.url();
    let mut all = vec![
        "gcp",
        "--audience",
        PROVIDER,
        "--project-id",
        PROJECT_ID,
        "--sts-endpoint",
        &url,
        "--iam-credentials-endpoint",
        &url,
    ];
    all.extend(args);
    let mut all_env = vec![("SSL_CERT_FILE", ca_file.to_str().unwrap())];
    all_env.extend(env);
    start_broker_at(program, listen, dir, socket, &all, &all_env)
}

// === the real client ===

/// Runs tests/py/gcp_token.py with only the variables google-auth documents for a metadata
/// server elsewhere (and an empty gcloud config dir, so ADC cannot find a gcloud login).
pub fn google_auth(
    dir: &Path,
    broker: &Broker,
    scopes: &[&str],
) -> Result<serde_json::Value, String> {
    let python = python_with(&["google.auth", "requests"]);
    let home = dir.join(format!("home-{}", free_port()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(python)
        .arg(root().join("tests/py/gcp_token.py"))
        .args(scopes)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("CLOUDSDK_CONFIG", home.join("gcloud"))
        .env("GCE_METADATA_HOST", broker.listen.to_string())
        .env("GCE_METADATA_IP", broker.listen.to_string());
    let out = output(cmd);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
