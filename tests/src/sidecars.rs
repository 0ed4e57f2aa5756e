//! Running the sidecar binaries under test, and talking to them as Envoy would.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};

use crate::{Proc, bin, free_port, http, wait_until};

/// A running `jwt-auth-helper` with its ext_authz and admin addresses.
#[derive(Debug)]
pub struct JwtHelper {
    /// The process.
    pub proc: Proc,
    /// ext_authz gRPC address.
    pub listen: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
}

impl JwtHelper {
    /// Starts the helper with `args` (plus `--listen`/`--admin-listen` on free ports) and waits
    /// until both listeners accept connections. It does not wait for readiness (a token):
    /// tests of start-up before the agent need the helper up and not ready.
    pub fn start(dir: &Path, socket: &str, args: &[&str]) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(dir, socket, listen, args)
    }

    /// [`JwtHelper::start`] serving ext_authz on `listen` (e.g. the address an Envoy cluster
    /// keeps pointing at across a restart).
    pub fn start_at(dir: &Path, socket: &str, listen: SocketAddr, args: &[&str]) -> Self {
        Self::start_program_at(&bin("jwt-auth-helper"), dir, socket, listen, args)
    }

    /// [`JwtHelper::start_at`] running `program` (a link to the binary elsewhere: real SPIRE
    /// tells workloads apart by their executable's path).
    pub fn start_program_at(
        program: &Path,
        dir: &Path,
        socket: &str,
        listen: SocketAddr,
        args: &[&str],
    ) -> Self {
        let (proc, admin) = Self::spawn(program, dir, socket, &listen.to_string(), args, || {
            std::net::TcpStream::connect(listen).is_ok()
        });
        Self {
            proc,
            listen,
            admin,
        }
    }

    /// Starts the helper serving ext_authz on the Unix socket `dir/authz.sock` (admin on a free
    /// port) with `args`, and waits until both accept connections. Returns the socket path.
    pub fn start_unix(dir: &Path, socket: &str, args: &[&str]) -> (Self, std::path::PathBuf) {
        let path = dir.join("authz.sock");
        let listen = format!("unix://{}", path.display());
        let (proc, admin) =
            Self::spawn(&bin("jwt-auth-helper"), dir, socket, &listen, args, || {
                std::os::unix::net::UnixStream::connect(&path).is_ok()
            });
        let helper = Self {
            proc,
            // No TCP ext_authz port: the unspecified address connects nowhere.
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin,
        };
        (helper, path)
    }

    /// Runs `program` on `listen` with admin on a free port; waits for admin and `serving`.
    fn spawn(
        program: &Path,
        dir: &Path,
        socket: &str,
        listen: &str,
        args: &[&str],
        mut serving: impl FnMut() -> bool,
    ) -> (Proc, SocketAddr) {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(["--socket", socket])
            .args(["--listen", listen, "--admin-listen", &admin.to_string()])
            .args(args)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn("jwt-auth-helper", cmd, dir);
        wait_until("jwt-auth-helper listeners", Duration::from_secs(20), || {
            proc.assert_running();
            http(admin, "GET", "/healthz").is_some_and(|(s, _)| s == 200) && serving()
        });
        (proc, admin)
    }

    /// `/readyz` status code.
    pub fn readyz(&self) -> u16 {
        http(self.admin, "GET", "/readyz").map_or(0, |(s, _)| s)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let admin = self.admin;
        let proc = &mut self.proc;
        wait_until("jwt-auth-helper /readyz", timeout, || {
            proc.assert_running();
            http(admin, "GET", "/readyz").is_some_and(|(s, _)| s == 200)
        });
    }

    /// A counter or gauge from the admin `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        crate::scrape(self.admin, series)
    }

    /// A gRPC client to the ext_authz port.
    pub async fn client(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::connect(format!("http://{}", self.listen))
            .await
            .unwrap()
    }
}

/// A `CheckRequest` as Envoy builds it: lower-case headers, `host` = `:authority`.
pub fn check_request(host: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut map: std::collections::HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
        .collect();
    map.insert(":authority".into(), host.into());
    map.insert(":method".into(), "GET".into());
    map.insert(":path".into(), "/".into());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    host: host.into(),
                    path: "/".into(),
                    headers: map,
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// What Envoy would do with a `CheckResponse`, flattened for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded, with these headers set.
    Allowed(Vec<(String, String)>),
    /// Answered directly with this HTTP status, body and headers.
    Denied {
        /// HTTP status.
        status: i32,
        /// Body.
        body: String,
        /// Headers.
        headers: Vec<(String, String)>,
    },
}

impl Verdict {
    /// The value of a header set on an allowed request.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Self::Allowed(h) | Self::Denied { headers: h, .. } => {
                h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
            }
        }
    }

    /// The denial status, or 200 when allowed.
    pub fn status(&self) -> i32 {
        match self {
            Self::Allowed(_) => 200,
            Self::Denied { status, .. } => *status,
        }
    }
}

/// Interprets a `CheckResponse` as Envoy does.
pub fn verdict(r: CheckResponse) -> Verdict {
    let pairs = |hs: Vec<envoy_types::ext_authz::v3::pb::HeaderValueOption>| {
        hs.into_iter()
            .filter_map(|h| h.header)
            .map(|h| (h.key, h.value))
            .collect::<Vec<_>>()
    };
    let ok = r.status.as_ref().is_some_and(|s| s.code == 0);
    match (ok, r.http_response) {
        (true, Some(HttpResponse::OkResponse(o))) => Verdict::Allowed(pairs(o.headers)),
        (true, _) => Verdict::Allowed(Vec::new()),
        (false, Some(HttpResponse::DeniedResponse(d))) => Verdict::Denied {
            status: d.status.map_or(403, |s| s.code),
            body: d.body,
            headers: pairs(d.headers),
        },
        (false, _) => Verdict::Denied {
            status: 403,
            body: String::new(),
            headers: Vec::new(),
        },
    }
}

/// One check against the helper.
pub async fn check(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    host: &str,
    headers: &[(&str, &str)],
) -> Verdict {
    verdict(
        client
            .check(check_request(host, headers))
            .await
            .unwrap()
            .into_inner(),
    )
}

/// The decoded claims of a compact JWT (no verification: for assertions on what was stamped).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("three segments");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

// === Tokens for validation tests ===

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_secs()).unwrap()
}

/// JWT-SVID claims for `sub`/`aud` expiring `exp_in` seconds from now (negative: expired).
pub fn claims(sub: &str, aud: &str, exp_in: i64) -> dev_agent::JwtClaims {
    dev_agent::JwtClaims {
        sub: sub.into(),
        aud: vec![aud.into()],
        exp: unix_now() + exp_in,
        iat: unix_now(),
        iss: None,
        extra: serde_json::Map::new(),
    }
}

/// `token` with its payload swapped for `other`'s: a valid header and signature over
/// different claims.
pub fn tampered(token: &str, other: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    parts.join(".")
}

/// `token`'s claims under an unsigned `alg: none` header with the same `kid`.
pub fn alg_none(token: &str, kid: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(format!(r#"{{"alg":"none","kid":"{kid}","typ":"JWT"}}"#)),
        token.split('.').nth(1).unwrap()
    )
}

/// The tokens a JWT-SVID check for `aud` trusting `own`'s and `partner`'s keys must refuse,
/// each named: expired, wrong audience, `alg: none`, tampered, an unknown `kid` of `own`'s trust
/// domain, and (last) a `sub` of `own`'s trust domain signed with `partner`'s key. `fresh` is a
/// valid token of `own` for `sub`.
pub fn refused_tokens(
    own: &dev_agent::Authority,
    partner: &dev_agent::Authority,
    sub: &str,
    aud: &str,
    fresh: &str,
) -> Vec<(&'static str, String)> {
    // Keys the agent never published: an unknown kid of our own trust domain.
    let stranger =
        dev_agent::Authority::new(own.trust_domain().clone(), dev_agent::JwtAlg::Es256).unwrap();
    vec![
        ("expired", own.sign_claims(&claims(sub, aud, -10)).unwrap()),
        (
            "wrong audience",
            own.sign_claims(&claims(sub, "someone-else", 300)).unwrap(),
        ),
        ("alg none", alg_none(fresh, &own.current_kid())),
        (
            "tampered",
            tampered(
                fresh,
                &own.sign_claims(&claims("spiffe://example.org/admin", aud, 300))
                    .unwrap(),
            ),
        ),
        (
            "unknown kid",
            stranger.sign_claims(&claims(sub, aud, 300)).unwrap(),
        ),
        (
            "sub of A signed with B's key",
            partner.sign_claims(&claims(sub, aud, 300)).unwrap(),
        ),
    ]
}

// === Load through Envoy with the current key ===

/// A GET of `/hello` through Envoy on `127.0.0.1:port` with `authorization: Bearer <token>`,
/// and a forged `x-spiffe-id` the filter chain must replace or remove.
pub fn get_with_token(port: u16, token: &str) -> crate::envoy::Response {
    let auth = format!("Bearer {token}");
    crate::envoy::request(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "GET",
        "/hello",
        &[
            ("authorization", &auth),
            ("x-spiffe-id", "spiffe://example.org/forged"),
        ],
    )
    .expect("HTTP request through Envoy")
}

/// Steady load for key-rotation tests: requests Envoy accepted and refused, and the switch
/// that stops the clients (also on drop, so a failed assertion does not leave them running
/// and the runtime waiting for them).
#[derive(Clone, Debug, Default)]
pub struct RotationLoad {
    /// Set to stop the clients.
    pub stop: Arc<AtomicBool>,
    /// Requests answered 200.
    pub ok: Arc<AtomicU64>,
    /// Requests answered anything else.
    pub failed: Arc<AtomicU64>,
}

impl RotationLoad {
    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// A guard that stops the clients when dropped.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.stop.clone())
    }

    /// `n` clients sending requests through Envoy on `port` as `sub` for `aud`, each with a
    /// token signed by the agent's current key at every request (as a JWT cache holds one
    /// right after a rotation), until [`RotationLoad::stop`] is set.
    pub fn clients(
        &self,
        agent: &Arc<dev_agent::RunningAgent>,
        port: u16,
        sub: &str,
        aud: &'static str,
        n: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let sub = workload_client::spiffe::SpiffeId::new(sub).unwrap();
        (0..n)
            .map(|_| {
                let (agent, load, sub) = (agent.clone(), self.clone(), sub.clone());
                std::thread::spawn(move || {
                    while !load.stop.load(Ordering::Relaxed) {
                        let token = agent
                            .authority()
                            .sign_jwt(&sub, &[aud], Duration::from_secs(60))
                            .unwrap();
                        let r = get_with_token(port, &token);
                        if r.status == 200 {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("refused during rotation: {r:?}");
                        }
                    }
                })
            })
            .collect()
    }
}

/// Sets its flag when dropped.
#[derive(Debug)]
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
