//! Vault peers for the `iam-broker vault` tests: a strict fake of the Vault HTTP API parts the
//! broker and its clients use, and the real `hvac` client. There is no Vault server to install
//! here, so the fake checks what Vault checks (docs/protocols.md#vault):
//!
//! - JWT auth `POST /v1/auth/jwt/login {"role","jwt"}`: the role exists; the JWT-SVID's `iss` is
//!   the role's bound issuer, its signature verifies with the JWKS found through the issuer's
//!   OIDC discovery document (the dev agent's, fetched on every login as Vault does after a key
//!   rotation), `exp` holds, `aud` contains a bound audience, and `sub` equals the role's
//!   `bound_subject`. Errors are `{"errors":[…]}` with Vault's texts (400).
//! - Tokens: `lease_duration` = the role's `token_ttl`, never past `token_max_ttl` from
//!   creation; `renew-self` extends by `token_ttl`, capped; `lookup-self`; `revoke-self`. An
//!   expired, revoked or unknown token, or one used in another namespace, gets 403 with Vault's
//!   two errors `permission denied` and `invalid token` (one multi-error string, as Vault
//!   renders it); a live token on a path its policy does not grant (`sys/`) gets `permission
//!   denied` alone.
//! - A KV v2 engine at `secret/`: `GET`/`POST`/`PUT /v1/secret/data/{path}` with versions.
//! - `X-Vault-Namespace`: when the fake is given a namespace, login and every request must
//!   carry it.
//!
//! It counts calls, logs logins and renewals with their time and status, remembers every token
//! it issued (tests grep logs for them), and can be sealed (503 `Vault is sealed` on every path)
//! or taken down and brought back on the same port with its state. It serves HTTPS with a
//! certificate from its own [`TestCa`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::aws::{FakeHttps, TestCa};
use crate::azure::{OidcRefusal, verify_with_discovery};
use crate::{free_port, output, python_with, root};

/// The JWT auth role the tests log in with.
pub const ROLE: &str = "web";
/// The audience bound to the role (the broker's default `--audience`).
pub const AUDIENCE: &str = "vault";

/// Counters of what the fake has answered.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful logins.
    pub logins: AtomicU64,
    /// Refused logins.
    pub refused_logins: AtomicU64,
    /// Successful renewals.
    pub renewals: AtomicU64,
    /// Renewals that hit the max TTL (granted less than the TTL).
    pub capped_renewals: AtomicU64,
    /// Revocations.
    pub revocations: AtomicU64,
    /// KV reads answered 200.
    pub kv_reads: AtomicU64,
    /// KV writes answered 200.
    pub kv_writes: AtomicU64,
    /// Requests refused with 403 `permission denied`.
    pub denied: AtomicU64,
    /// Requests answered 503 while sealed.
    pub sealed: AtomicU64,
    /// Every request received.
    pub requests: AtomicU64,
}

/// One login or `renew-self` as the fake answered it.
#[derive(Clone, Copy, Debug)]
pub struct AuthCall {
    /// A login (else a renewal).
    pub login: bool,
    /// The answer's status.
    pub status: u16,
    /// When it was answered (Unix seconds).
    pub at: f64,
}

#[derive(Debug)]
struct Token {
    created: Instant,
    expires: Instant,
    namespace: Option<String>,
    revoked: bool,
}

#[derive(Debug)]
struct State {
    issuer: String,
    bound_subject: String,
    namespace: Option<String>,
    ttl: Mutex<Duration>,
    max_ttl: Mutex<Duration>,
    sealed: AtomicBool,
    login_delay: Mutex<Duration>,
    tokens: Mutex<HashMap<String, Token>>,
    /// KV v2 `secret/`: path → versions (newest last).
    kv: Mutex<HashMap<String, Vec<serde_json::Value>>>,
    /// The `X-Vault-Token` of every KV request (`None`: none sent), oldest first.
    kv_tokens: Mutex<Vec<Option<String>>>,
    /// Every login and renewal, oldest first.
    auth_calls: Mutex<Vec<AuthCall>>,
    counters: Counters,
    next: AtomicU64,
    /// Forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) received, by name.
    forwarding: Mutex<Vec<String>>,
}

/// The fake Vault, on its own thread and runtime; stops on drop.
#[derive(Debug)]
pub struct FakeVault {
    /// Where it listens (kept across [`FakeVault::down`] / [`FakeVault::up`]).
    pub addr: SocketAddr,
    ca: TestCa,
    state: Arc<State>,
    server: Mutex<Option<FakeHttps>>,
}

impl FakeVault {
    /// Serves HTTPS with a fresh CA, with role [`ROLE`] trusting JWT-SVIDs from `issuer` for
    /// `bound_subject`; tokens live an hour (max 24 h) unless changed.
    pub fn start(issuer: &str, bound_subject: &str, namespace: Option<&str>) -> Self {
        let state = Arc::new(State {
            issuer: issuer.to_owned(),
            bound_subject: bound_subject.to_owned(),
            namespace: namespace.map(str::to_owned),
            ttl: Mutex::new(Duration::from_secs(3600)),
            max_ttl: Mutex::new(Duration::from_secs(24 * 3600)),
            sealed: AtomicBool::new(false),
            login_delay: Mutex::new(Duration::ZERO),
            tokens: Mutex::new(HashMap::new()),
            kv: Mutex::new(HashMap::new()),
            kv_tokens: Mutex::new(Vec::new()),
            auth_calls: Mutex::new(Vec::new()),
            counters: Counters::default(),
            next: AtomicU64::new(1),
            forwarding: Mutex::new(Vec::new()),
        });
        let ca = TestCa::new();
        let server = serve(&ca, free_port(), &state);
        Self {
            addr: server.addr,
            ca,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate (PEM) of its TLS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca.ca_pem
    }

    /// Writes [`FakeVault::ca_pem`] into `dir`; returns the path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("vault-ca-{}.pem", self.addr.port()));
        std::fs::write(&path, self.ca_pem()).unwrap();
        path
    }

    /// Tokens issued or renewed from now on: `ttl`, at most `max_ttl` after login.
    pub fn set_ttls(&self, ttl: Duration, max_ttl: Duration) {
        *self.state.ttl.lock().unwrap() = ttl;
        *self.state.max_ttl.lock().unwrap() = max_ttl;
    }

    /// Sealed: every path answers 503 until unsealed.
    pub fn set_sealed(&self, sealed: bool) {
        self.state.sealed.store(sealed, Ordering::SeqCst);
    }

    /// Revokes every token issued so far (an operator's `vault token revoke`, or a lease
    /// tidy-up): their renewals are then refused.
    pub fn revoke_all(&self) {
        for t in self.state.tokens.lock().unwrap().values_mut() {
            t.revoked = true;
        }
    }

    /// Logins take `delay` from now on (so requests pile up behind the first one).
    pub fn set_login_delay(&self, delay: Duration) {
        *self.state.login_delay.lock().unwrap() = delay;
    }

    /// Stops listening (connections refused); state is kept.
    pub fn down(&self) {
        drop(self.server.lock().unwrap().take());
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        let mut server = self.server.lock().unwrap();
        if server.is_none() {
            *server = Some(serve(&self.ca, self.addr.port(), &self.state));
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    /// A counter's value, e.g. `v.count(|c| &c.logins)`.
    pub fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        counter(&self.state.counters).load(Ordering::SeqCst)
    }

    /// Every token it issued.
    pub fn issued(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().keys().cloned().collect()
    }

    /// The names of the forwarding headers any request carried, oldest first.
    pub fn forwarding_headers_seen(&self) -> Vec<String> {
        self.state.forwarding.lock().unwrap().clone()
    }

    /// Tokens issued and not revoked.
    pub fn live_tokens(&self) -> usize {
        self.state
            .tokens
            .lock()
            .unwrap()
            .values()
            .filter(|t| !t.revoked)
            .count()
    }

    /// Every login and `renew-self`, oldest first.
    pub fn auth_calls(&self) -> Vec<AuthCall> {
        self.state.auth_calls.lock().unwrap().clone()
    }

    /// The `X-Vault-Token` each KV request carried, oldest first.
    pub fn kv_tokens(&self) -> Vec<Option<String>> {
        self.state.kv_tokens.lock().unwrap().clone()
    }

    /// Writes a KV v2 secret directly (test setup).
    pub fn put_secret(&self, path: &str, data: serde_json::Value) {
        self.state
            .kv
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .push(data);
    }
}

fn serve(ca: &TestCa, port: u16, state: &Arc<State>) -> FakeHttps {
    let s = state.clone();
    FakeHttps::start("fake-vault", port, ca, move |method, uri, headers, body| {
        handle(&s, method, uri, headers, body)
    })
}

// === the API ===

fn json(status: u16, body: &serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn errors(status: u16, errors: &[&str]) -> Response {
    json(status, &serde_json::json!({ "errors": errors }))
}

/// A live token on a path its policy does not grant.
fn permission_denied(s: &State) -> Response {
    s.counters.denied.fetch_add(1, Ordering::SeqCst);
    errors(403, &["permission denied"])
}

/// No live token of this namespace: Vault joins the two errors into one multi-error string.
fn invalid_token(s: &State) -> Response {
    s.counters.denied.fetch_add(1, Ordering::SeqCst);
    errors(
        403,
        &["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"],
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn handle(s: &State, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Response {
    let response = answer(s, method, uri, headers, body);
    let write = *method == Method::POST || *method == Method::PUT;
    let login = match uri.path() {
        "/v1/auth/jwt/login" => Some(true),
        "/v1/auth/token/renew-self" => Some(false),
        _ => None,
    };
    if let Some(login) = login.filter(|_| write) {
        s.auth_calls.lock().unwrap().push(AuthCall {
            login,
            status: response.status().as_u16(),
            at: crate::aws::unix_time(),
        });
    }
    response
}

fn answer(s: &State, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Response {
    s.counters.requests.fetch_add(1, Ordering::SeqCst);
    s.forwarding.lock().unwrap().extend(
        headers
            .keys()
            .map(|n| n.as_str())
            .filter(|n| n.starts_with("x-forwarded-") || *n == "forwarded" || *n == "x-real-ip")
            .map(str::to_owned),
    );
    if s.sealed.load(Ordering::SeqCst) {
        s.counters.sealed.fetch_add(1, Ordering::SeqCst);
        return errors(503, &["Vault is sealed"]);
    }
    let namespace = header_str(headers, "x-vault-namespace").map(|n| n.trim_matches('/'));
    let path = uri.path();
    let write = *method == Method::POST || *method == Method::PUT;
    if path == "/v1/auth/jwt/login" && write {
        if namespace != s.namespace.as_deref() {
            return errors(
                400,
                &["no handler for route \"auth/jwt/login\". route entry not found."],
            );
        }
        // On the fake's blocking pool: a slow login holds no other request up.
        std::thread::sleep(*s.login_delay.lock().unwrap());
        let response = login(s, body);
        let counter = if response.status() == StatusCode::OK {
            &s.counters.logins
        } else {
            &s.counters.refused_logins
        };
        counter.fetch_add(1, Ordering::SeqCst);
        return response;
    }
    // Everything else needs a live token of this namespace.
    let token = header_str(headers, "x-vault-token").map(str::to_owned);
    if let Some(kv_path) = path.strip_prefix("/v1/secret/data/") {
        s.kv_tokens.lock().unwrap().push(token.clone());
        if !authorized(s, token.as_deref(), namespace) {
            return invalid_token(s);
        }
        return match *method {
            Method::GET => kv_read(s, kv_path, uri.query()),
            Method::POST | Method::PUT => kv_write(s, kv_path, body),
            _ => errors(405, &["unsupported operation"]),
        };
    }
    let Some(token) = token.filter(|t| authorized(s, Some(t), namespace)) else {
        return invalid_token(s);
    };
    if path.starts_with("/v1/sys/") {
        // The role's policies grant KV and the token's own endpoints, nothing under sys/.
        return permission_denied(s);
    }
    match (path, write || *method == Method::GET) {
        ("/v1/auth/token/renew-self", true) if write => renew(s, &token),
        ("/v1/auth/token/lookup-self", true) => lookup(s, &token),
        ("/v1/auth/token/revoke-self", true) if write => {
            if let Some(t) = s.tokens.lock().unwrap().get_mut(&token) {
                t.revoked = true;
            }
            s.counters.revocations.fetch_add(1, Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => errors(404, &[]),
    }
}

fn authorized(s: &State, token: Option<&str>, namespace: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let tokens = s.tokens.lock().unwrap();
    tokens.get(token).is_some_and(|t| {
        !t.revoked && t.expires > Instant::now() && t.namespace.as_deref() == namespace
    })
}

fn login(s: &State, body: &Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return errors(400, &["failed to parse JSON input"]);
    };
    let role = v["role"].as_str().unwrap_or("");
    if role != ROLE {
        return errors(400, &[&format!("role \"{role}\" could not be found")]);
    }
    let Some(jwt) = v["jwt"].as_str().filter(|j| !j.is_empty()) else {
        return errors(400, &["missing token"]);
    };
    let claims = match verify_with_discovery(&s.issuer, jwt, AUDIENCE) {
        Ok(claims) => claims,
        Err(OidcRefusal::Invalid(workload_client::ValidationError::AudienceMismatch {
            ..
        })) => {
            return errors(
                400,
                &[
                    "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience",
                ],
            );
        }
        Err(OidcRefusal::Invalid(workload_client::ValidationError::Expired)) => {
            return errors(
                400,
                &["error validating token: invalid expiration time (exp) claim: token is expired"],
            );
        }
        Err(OidcRefusal::Issuer(iss)) => {
            return errors(
                400,
                &[&format!(
                    "error validating token: invalid issuer (iss) claim {iss}"
                )],
            );
        }
        Err(e) => {
            return errors(400, &[&format!("error validating token: {e:?}")]);
        }
    };
    if claims["sub"] != s.bound_subject.as_str() {
        return errors(
            400,
            &["error validating claims: sub claim does not match bound subject"],
        );
    }
    let ttl = *s.ttl.lock().unwrap();
    let max_ttl = *s.max_ttl.lock().unwrap();
    let lease = ttl.min(max_ttl);
    let n = s.next.fetch_add(1, Ordering::SeqCst);
    let token = format!("hvs.fake-{n}-{:08x}", rand_u32());
    let now = Instant::now();
    s.tokens.lock().unwrap().insert(
        token.clone(),
        Token {
            created: now,
            expires: now + lease,
            namespace: s.namespace.clone(),
            revoked: false,
        },
    );
    json(200, &auth_reply(&token, lease.as_secs(), &claims))
}

fn auth_reply(token: &str, lease: u64, claims: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "request_id": format!("req-{}", rand_u32()),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": token,
            "accessor": format!("acc-{}", rand_u32()),
            "policies": ["default", "kv-read"],
            "token_policies": ["default", "kv-read"],
            "metadata": { "role": ROLE, "sub": claims["sub"] },
            "lease_duration": lease,
            "renewable": true,
            "entity_id": "ent-1",
            "token_type": "service",
            "orphan": true,
        },
    })
}

fn renew(s: &State, token: &str) -> Response {
    let ttl = *s.ttl.lock().unwrap();
    let max_ttl = *s.max_ttl.lock().unwrap();
    let mut tokens = s.tokens.lock().unwrap();
    let Some(t) = tokens.get_mut(token) else {
        return permission_denied(s);
    };
    let now = Instant::now();
    let cap = t.created + max_ttl;
    let expires = (now + ttl).min(cap);
    // Vault grants whole seconds.
    let lease = expires.saturating_duration_since(now).as_secs();
    t.expires = now + Duration::from_secs(lease);
    drop(tokens);
    s.counters.renewals.fetch_add(1, Ordering::SeqCst);
    if lease < ttl.as_secs() {
        s.counters.capped_renewals.fetch_add(1, Ordering::SeqCst);
    }
    json(200, &auth_reply(token, lease, &serde_json::Value::Null))
}

fn lookup(s: &State, token: &str) -> Response {
    let tokens = s.tokens.lock().unwrap();
    let ttl = tokens.get(token).map_or(0, |t| {
        t.expires
            .saturating_duration_since(Instant::now())
            .as_secs()
    });
    json(
        200,
        &serde_json::json!({"data": {"ttl": ttl, "renewable": true, "policies": ["default", "kv-read"]}}),
    )
}

fn kv_read(s: &State, path: &str, query: Option<&str>) -> Response {
    let kv = s.kv.lock().unwrap();
    let Some(versions) = kv.get(path) else {
        return errors(404, &[]);
    };
    let version = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("version=")))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(versions.len());
    let Some(data) = versions.get(version - 1) else {
        return errors(404, &[]);
    };
    s.counters.kv_reads.fetch_add(1, Ordering::SeqCst);
    json(
        200,
        &serde_json::json!({
            "data": {
                "data": data,
                "metadata": {"version": version, "deletion_time": "", "destroyed": false,
                             "created_time": "2026-01-01T00:00:00Z", "custom_metadata": null},
            },
            "lease_duration": 0, "renewable": false, "lease_id": "",
        }),
    )
}

fn kv_write(s: &State, path: &str, body: &Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return errors(400, &["failed to parse JSON input"]);
    };
    if !v["data"].is_object() {
        return errors(400, &["no data provided"]);
    }
    let mut kv = s.kv.lock().unwrap();
    let versions = kv.entry(path.to_owned()).or_default();
    versions.push(v["data"].clone());
    let version = versions.len();
    s.counters.kv_writes.fetch_add(1, Ordering::SeqCst);
    json(
        200,
        &serde_json::json!({"data": {"version": version, "deletion_time": "", "destroyed": false,
                                     "created_time": "2026-01-01T00:00:00Z"}}),
    )
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish() as u32
}

// === the real client ===

/// Runs tests/py/vault_kv.py with hvac's documented configuration only: `VAULT_ADDR` (the
/// broker), an empty `HOME` (no `~/.vault-token`), plus `env` (e.g. `VAULT_TOKEN`).
/// `Ok(stdout JSON)` or `Err(stderr)`.
pub fn hvac(
    dir: &Path,
    vault_addr: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<serde_json::Value, String> {
    let python = python_with(&["hvac"]);
    let home = dir.join(format!("home-{}", free_port()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("180")
        .arg(python)
        .arg(root().join("tests/py/vault_kv.py"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("VAULT_ADDR", vault_addr)
        .envs(env.iter().copied());
    let out = output(cmd);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// hvac's `loop` mode started in the background: reads until `stop` exists.
pub fn hvac_loop(dir: &Path, vault_addr: &str, path: &str, stop: &Path) -> std::process::Child {
    let python = python_with(&["hvac"]);
    let home = dir.join(format!("home-{}", free_port()));
    std::fs::create_dir_all(&home).unwrap();
    Command::new(python)
        .arg(root().join("tests/py/vault_kv.py"))
        .args(["loop", path, stop.to_str().unwrap()])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("VAULT_ADDR", vault_addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}
