//! `cargo xtask soak [--spire] [--minutes N]`: every sidecar with real Envoy, moto and the AWS
//! SDK under steady load while a chaos schedule runs, then a table of what held and what did
//! not. The test command runs a 60-second variant of each (`soak [--spire] --seconds 60`).
//!
//! `--spire` runs the same on SPIRE instead of the dev agent (see "On SPIRE" below).
//!
//! What runs, on loopback:
//! - one dev agent for the node, serving the client and the server identity, with short
//!   X.509-SVIDs (a rotation every few seconds), short JWT-SVIDs and JWT key rotation;
//! - per side an sds-bridge; the server's also serves the JWKS for `jwt_authn`;
//! - a client Envoy with two listeners, both going to the server Envoy over mTLS (certificates
//!   through SDS): one stamps the JWT-SVID through jwt-auth-helper (ext_authz, `envoy_grpc`),
//!   the other through `credential_injector` (a `jwt-svid:` secret from sds-bridge);
//! - a server Envoy checking the client certificate and the JWT-SVID (`jwt_authn` as
//!   `sds-bridge jwt-authn-config` prints it), in front of an echo server;
//! - iam-broker aws against moto behind a faultable proxy, read by a `/v1/creds` loop and by
//!   boto3 (container credentials) calling `sts get-caller-identity` in a loop;
//! - iam-broker vault in front of the suite's strict fake Vault (JWT auth checked against the
//!   agent's OIDC discovery; 8 s tokens renewed at half-life, re-login at a 24 s max TTL), read
//!   by a KV loop through its API proxy with no token of its own;
//! - iam-broker azure and gcp in front of the suite's strict Entra ID and Google STS stand-ins
//!   (40 s tokens), read through the App Service managed identity and GCE metadata endpoints.
//!
//! The chaos: the agent SIGKILLed and restarted every 30 s, every third time for longer than a
//! JWT-SVID's half-life; STS failing (5xx, throttling, slow) for 6 s every 20 s; each of the
//! seven sidecars (the helper, both bridges, the four brokers) stopped with SIGTERM and
//! restarted in turn, once each during the warm-up and then one every 100 s (a bridge's restart
//! also cuts Envoy's SDS stream); garbage written to every socket and port every few seconds.
//!
//! What it checks (exit 1 if any fails):
//! - no failed request while a valid credential existed: a failure counts as expected only
//!   inside a window where none did (agent down past the held credential's expiry, until the
//!   sidecars hold a fresh one) or where the sidecar on the path was restarting, and the table
//!   lists those windows;
//! - no request carrying an expired JWT-SVID (Envoy's "Jwt is expired") or client certificate
//!   (the `notAfter` of the certificate the server saw), except a token credential_injector
//!   still stamps inside such a window (SDS cannot take back the secret it was given);
//! - after warm-up, each sidecar's RSS grows < 10 %, and its open FDs and live tokio tasks
//!   stay flat;
//! - FetchJWTSVID calls within the bounds of the JWT caches' refresh schedule with this agent
//!   (`rates::jwt_fetch_bounds`: about one per key per half-life);
//! - each broker's successful exchanges (STS, Vault logins and renewals, Entra ID, Google STS),
//!   counted at its stand-in, between bounds derived from the lifetime the stand-in issues, the
//!   run time, the restarts and the time spent retrying (`suite_tests::rates`); its failed ones
//!   no more than the retry schedule fits into the fault windows; and the broker's own count,
//!   summed over its incarnations (read before each restart), equal to the stand-in's.
//!
//! On SPIRE (`--spire`, `suite_tests::spire`): a SPIRE server, one agent and SPIRE's OIDC
//! discovery provider (the issuer Vault, Entra ID and Google verify JWT-SVIDs through). Each
//! sidecar runs as its own workload, a link to its binary registered with its own entry
//! (`unix:path`): the helper, the client bridge and the brokers as the client's SPIFFE ID, the
//! server bridge as the server's. What differs:
//! - X.509-SVIDs of 30 s: SPIRE backdates `notBefore` by 10 s and the agent renews at half of
//!   notBefore→notAfter (± 10 %), so every ~10 s as on the dev agent; JWT-SVIDs of 12 s (not
//!   backdated). The agent hands back a JWT-SVID it cached while more than 45–55 % of its
//!   life is left, so the FetchJWTSVID bounds are SPIRE's (`rates::jwt_fetch_bounds`), counted
//!   by the agent's own Prometheus telemetry.
//! - The agent outages are SIGKILLs of the SPIRE agent, started again on its data (it keeps its
//!   SVID). The OIDC discovery provider reads keys from the server, so it keeps answering while
//!   the agent is down: the stand-ins refuse nothing then, and every failed exchange counts.
//! - The dev agent's JWT key rotation every 15 s has no SPIRE equivalent short of a CA TTL in
//!   minutes; instead an operator's forced rotations run every 120 s each (from 3 s and 6 s,
//!   while the rest of the chaos goes on): the X.509 CA (`spire-server localauthority x509 prepare`; once both Envoys hold the new CA in
//!   their validation contexts, `activate` and `taint` the old; once both Envoys present
//!   certificates from the new CA and the agent renewed its own SVID, `revoke`) and the JWT
//!   key (`localauthority jwt prepare`; once the key is in the bridge's JWKS, in SPIRE's
//!   discovery document and Envoy fetched the JWKS twice since, `activate` and `taint`; once
//!   every token signed with the old key has expired, `revoke`). Each step must be reached
//!   within 60 s, with no failed request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use suite_tests::aws::{Broker, Fault, Moto, StsProxy, rfc3339};
use suite_tests::azure::{self, FakeEntra, FederatedCredential};
use suite_tests::envoy::{Envoy, ext_authz_filter, request, static_cluster};
use suite_tests::gcp::{self, FakeGoogle};
use suite_tests::rates::{self, Bounds, Call, Interval, Run};
use suite_tests::sds::{
    SdsBridge, Shape, bootstrap, common_tls_context, credential_injector_listener,
    filtered_listener, jwt_authn_config, mtls_listener_with_filters, sds_cluster, tls_cluster,
};
use suite_tests::sidecars::JwtHelper;
use suite_tests::spire::{ServerOptions, Spire};
use suite_tests::vault::{self, FakeVault};
use suite_tests::{DevAgent, Proc, free_port, on_signal_clean_up, python_with, wait_until};

const TD: &str = "soak.example";
const CLIENT: &str = "spiffe://soak.example/ns/soak/sa/client";
const SERVER: &str = "spiffe://soak.example/ns/soak/sa/server";
const AUDIENCE: &str = "soak-backend";
/// X.509-SVID lifetime: the agent rotates at half-life, so every 10 s; a long agent outage
/// (longer than a JWT-SVID's half-life) stays shorter than the certificate held.
const X509_TTL: u64 = 20;
/// On SPIRE: `notBefore` is backdated by this much and the agent renews at half of
/// notBefore→notAfter, ± 10 % (`pkg/server/credtemplate`, `pkg/common/rotationutil`)…
const SPIRE_BACKDATE: f64 = 10.0;
/// …so 30 s SVIDs are renewed with 18–22 s left: every ~10 s, as on the dev agent.
const SPIRE_X509_TTL: u64 = 30;
/// JWT-SVID lifetime: the sidecars refresh at half-life (6 s).
const JWT_TTL: u64 = 12;
/// JWT signing key rotation at the agent.
const JWT_KEY_ROTATION: u64 = 15;
/// STS credential lifetime (the proxy rewrites moto's): the broker refreshes at half-life.
const STS_LIFETIME: u64 = 40;
/// JWT-SVID cache keys, by (SPIFFE ID, audience) pair: the helper's audience and the
/// injector's `jwt-svid:` secret are the same pair for the client (SPIRE's agent caches one
/// token for both), then each broker's (aws, vault, azure, gcp).
const JWT_KEYS: [u64; 5] = [2, 1, 1, 1, 1];
/// The forced rotations of SPIRE's local authorities: each kind every this many seconds…
const AUTHORITY_ROTATION_EVERY: f64 = 120.0;
/// …the X.509 CA's first at 3 s, the JWT key's at 6 s (so a 60 s run has both, whatever the
/// agent outage at 20 s and the STS faults hold up)…
const FIRST_X509_ROTATION: f64 = 3.0;
const FIRST_JWT_ROTATION: f64 = 6.0;
/// …each step due within this long, and none begun with less than this much of the run left.
const ROTATION_STEP_TIMEOUT: f64 = 60.0;
const ROTATION_LEAD: f64 = 28.0;
/// Access token lifetime at the Entra ID and Google STS stand-ins: a refresh every 20 s.
const CLOUD_TOKEN_LIFETIME: u64 = 40;
/// The `X-IDENTITY-HEADER` secret azure clients present.
const IDENTITY_HEADER: &str = "soak-identity-header";
const AZURE_TOKEN: &str = "/msi/token?api-version=2019-08-01&resource=https://storage.azure.com";
const GCP_TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Time after a (re)start before figures count as steady.
const WARM_UP: f64 = 15.0;
/// Vault token TTL and max TTL at the fake: a renewal every 4 s, a new login every 24 s.
const VAULT_TTL: Duration = Duration::from_secs(8);
const VAULT_MAX_TTL: Duration = Duration::from_secs(24);
/// The KV v2 secret the loop reads through the vault proxy, and what it must contain.
const VAULT_SECRET: &str = "/v1/secret/data/soak/config";
const VAULT_VALUE: &str = "soak-s3cr3t";
/// The container credentials token clients present to the broker.
const CONTAINER_TOKEN: &str = "soak-container-token";
/// iam-broker's longest retry delay while it has no JWT-SVID (s).
const IDENTITY_RETRY_MAX: f64 = 2.0;
/// iam-broker's deadline for one exchange (s): an answer later than that it never sees.
const BROKER_ATTEMPT_TIMEOUT: f64 = 10.0;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// === the record ===

/// One failed request.
#[derive(Clone, Debug)]
struct Failure {
    at: f64,
    path: &'static str,
    what: String,
}

/// A span of time in which failures on `paths` are expected, and why.
#[derive(Clone, Debug)]
struct Window {
    from: f64,
    to: f64,
    paths: &'static [&'static str],
    why: String,
}

/// Everything the load and the chaos write down, for the table.
#[derive(Debug, Default)]
struct Record {
    ok: BTreeMap<&'static str, u64>,
    failures: Vec<Failure>,
    /// Requests Envoy refused for carrying an expired JWT-SVID: when, and on which path.
    expired_tokens: Vec<(f64, &'static str)>,
    expired_certs: u64,
    windows: Vec<Window>,
    events: Vec<(f64, String)>,
}

type Shared = Arc<Mutex<Record>>;

fn event(record: &Shared, what: String) {
    println!(
        "  [{:>7.1}] {what}",
        now() - START.get().copied().unwrap_or(0.0)
    );
    record.lock().unwrap().events.push((now(), what));
}

static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

fn elapsed() -> f64 {
    now() - START.get().copied().unwrap_or(0.0)
}

// === the system under test ===

/// What the sidecars get their identities from.
enum Agent {
    /// The development agent, serving OIDC discovery itself.
    Dev(DevAgent),
    /// SPIRE's server, agent and OIDC discovery provider.
    Spire(Box<Spire>),
}

impl Agent {
    fn endpoint(&self) -> &str {
        match self {
            Self::Dev(a) => &a.endpoint,
            Self::Spire(s) => &s.agent.endpoint,
        }
    }

    fn socket(&self) -> &Path {
        match self {
            Self::Dev(a) => &a.socket,
            Self::Spire(s) => &s.agent.socket,
        }
    }

    /// Its TCP ports, for the garbage.
    fn ports(&self) -> Vec<SocketAddr> {
        match self {
            Self::Dev(a) => vec![a.admin],
            Self::Spire(s) => vec![s.agent.health, s.agent.metrics],
        }
    }

    /// FetchJWTSVID calls this agent process has counted.
    fn jwt_fetches(&self) -> u64 {
        match self {
            Self::Dev(a) => a.jwt_fetches(),
            Self::Spire(s) => s.agent.jwt_fetches(),
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Dev(a) => a.proc.kill(),
            Self::Spire(s) => s.agent.kill(),
        }
    }

    /// Starts it again on the same socket and state, and waits until it serves.
    fn start_again(&mut self) {
        match self {
            Self::Dev(a) => a.restart(),
            Self::Spire(s) => s.agent.start_again(),
        }
    }

    fn assert_running(&mut self) {
        match self {
            Self::Dev(a) => a.proc.assert_running(),
            Self::Spire(s) => {
                s.agent.proc.assert_running();
                s.server.proc.assert_running();
                if let Some(oidc) = s.oidc.as_mut() {
                    oidc.proc.assert_running();
                }
            }
        }
    }

    fn spire(&self) -> Option<&Spire> {
        match self {
            Self::Dev(_) => None,
            Self::Spire(s) => Some(s),
        }
    }

    /// The X.509-SVID lifetime the agent issues and the time before its `notBefore` that
    /// lifetime is counted from (`notAfter - notBefore` is their sum).
    fn x509_ttl(&self) -> (f64, f64) {
        match self {
            Self::Dev(_) => (X509_TTL as f64, 0.0),
            Self::Spire(_) => (SPIRE_X509_TTL as f64, SPIRE_BACKDATE),
        }
    }

    /// The least validity a credential has left once the sidecars hold a fresh one after an
    /// outage, `(JWT-SVID, X.509-SVID)`: on the dev agent half its life (the agent rotates
    /// at half-life); on SPIRE 45 % of its life, the earliest the agent renews an SVID or
    /// stops handing out the JWT-SVID it cached.
    fn fresh(&self) -> (f64, f64) {
        let (x509, backdate) = self.x509_ttl();
        match self {
            Self::Dev(_) => (JWT_TTL as f64 / 2.0 - 1.0, x509 / 2.0 - 1.0),
            Self::Spire(_) => (
                rates::SPIRE_REUSE.0 * JWT_TTL as f64 - 1.0,
                rates::SPIRE_REUSE.0 * (x509 + backdate) - 1.0,
            ),
        }
    }
}

/// The program a sidecar runs: the workspace binary on the dev agent; on SPIRE a link to it
/// in `<dir>/programs`, registered as that sidecar's own workload (`unix:path`).
fn program(agent: &Agent, dir: &Path, which: Sidecar) -> PathBuf {
    match agent {
        Agent::Dev(_) => suite_tests::bin(which.binary()),
        Agent::Spire(_) => dir.join("programs").join(which.program()),
    }
}

struct System {
    dir: PathBuf,
    agent: Agent,
    client_bridge: SdsBridge,
    server_bridge: SdsBridge,
    helper: JwtHelper,
    helper_port: u16,
    broker: Broker,
    broker_listen: SocketAddr,
    vault: FakeVault,
    vault_broker: Broker,
    entra: FakeEntra,
    azure_broker: Broker,
    google: FakeGoogle,
    gcp_broker: Broker,
    proxy: StsProxy,
    moto: Moto,
    client_envoy: Envoy,
    server_envoy: Envoy,
    jwks: SocketAddr,
    jwt_port: u16,
    injector_port: u16,
    mtls_port: u16,
}

fn start_helper(dir: &Path, agent: &Agent, port: u16) -> JwtHelper {
    // A fixed port across restarts: Envoy's ext_authz cluster points at it.
    let mut helper = JwtHelper::start_program_at(
        &program(agent, dir, Sidecar::Helper),
        dir,
        agent.endpoint(),
        addr(port),
        &["--audience", AUDIENCE],
    );
    helper.wait_ready(Duration::from_secs(30));
    helper
}

fn start_bridge(which: Sidecar, root: &Path, agent: &Agent, jwks: Option<SocketAddr>) -> SdsBridge {
    let jwks_arg = jwks.map(|a| a.to_string());
    let mut args = vec!["--log-format", "json"];
    if let Some(a) = &jwks_arg {
        args.extend(["--jwks-listen", a.as_str()]);
    }
    let (name, dir) = match which {
        Sidecar::ServerBridge => ("sds-bridge-server", root.join("server")),
        _ => ("sds-bridge-client", root.join("client")),
    };
    let mut bridge = SdsBridge::start_program(
        &program(agent, root, which),
        name,
        &dir,
        agent.endpoint(),
        &args,
        &[("RUST_LOG", "warn")],
    );
    bridge.wait_ready(Duration::from_secs(30));
    bridge
}

fn start_broker(dir: &Path, agent: &Agent, sts: &str, listen: SocketAddr) -> Broker {
    // A fixed address across restarts: the clients keep using it.
    let mut broker = Broker::start_at(
        Command::new(program(agent, dir, Sidecar::Broker(Provider::Aws))),
        listen,
        dir,
        agent.endpoint(),
        sts,
        &[],
        &[("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

fn start_vault_broker(dir: &Path, agent: &Agent, vault: &FakeVault, listen: SocketAddr) -> Broker {
    let vault_dir = dir.join("vault");
    let ca = vault.write_ca(&vault_dir);
    let mut broker = azure::start_broker_at(
        &program(agent, dir, Sidecar::Broker(Provider::Vault)),
        listen,
        &vault_dir,
        agent.endpoint(),
        &[
            "vault",
            "--vault-addr",
            &vault.url(),
            "--role",
            vault::ROLE,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

fn start_azure_broker(dir: &Path, agent: &Agent, entra: &FakeEntra, listen: SocketAddr) -> Broker {
    let mut broker = azure::start_entra_broker_at(
        &program(agent, dir, Sidecar::Broker(Provider::Azure)),
        listen,
        &dir.join("azure"),
        agent.endpoint(),
        entra,
        IDENTITY_HEADER,
        &[],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

fn start_gcp_broker(dir: &Path, agent: &Agent, google: &FakeGoogle, listen: SocketAddr) -> Broker {
    let mut broker = gcp::start_google_broker_at(
        &program(agent, dir, Sidecar::Broker(Provider::Gcp)),
        listen,
        &dir.join("gcp"),
        agent.endpoint(),
        google,
        &[],
        &[],
    );
    broker.wait_ready(Duration::from_secs(30));
    broker
}

/// What [`System::start`] starts, in its order; the load and the boto3 loop follow.
const STARTS: &str = "2 sds-bridges, jwt-auth-helper, \
    moto behind the STS proxy + iam-broker aws, fake Vault + iam-broker vault, \
    fake Entra ID + iam-broker azure, fake Google STS + iam-broker gcp, echo upstream, 2 Envoys";

/// The dev agent for both identities, serving OIDC discovery at the JWT-SVIDs' issuer.
fn dev_agent(dir: &Path) -> (Agent, String) {
    let state = dir.join("state");
    let ids = format!("{CLIENT},{SERVER}");
    let oidc = addr(free_port());
    let issuer = format!("http://{oidc}");
    let agent = DevAgent::start(
        dir,
        &[
            "--trust-domain",
            TD,
            "--spiffe-id",
            &ids,
            "--state-dir",
            state.to_str().unwrap(),
            "--x509-ttl",
            &format!("{X509_TTL}s"),
            "--jwt-ttl",
            &format!("{JWT_TTL}s"),
            "--jwt-key-rotation",
            &format!("{JWT_KEY_ROTATION}s"),
            "--oidc-listen",
            &oidc.to_string(),
            "--jwt-issuer",
            &issuer,
        ],
    );
    (Agent::Dev(agent), issuer)
}

/// SPIRE's server (SVID lifetimes as above), agent and OIDC discovery provider, and every
/// sidecar's program linked into `<dir>/programs` and registered as its own workload: the
/// server bridge as the server, the other six as the client.
fn spire(dir: &Path) -> (Agent, String) {
    let options = ServerOptions {
        x509_ttl: Duration::from_secs(SPIRE_X509_TTL),
        jwt_ttl: Duration::from_secs(JWT_TTL),
        ..ServerOptions::new(TD)
    };
    let spire = Spire::start(dir, &options);
    let programs = dir.join("programs");
    std::fs::create_dir_all(&programs).unwrap();
    for which in ROTATION {
        let id = if which == Sidecar::ServerBridge {
            SERVER
        } else {
            CLIENT
        };
        spire.workload_binary(&programs, which.binary(), which.program(), id, &[]);
    }
    let issuer = spire.issuer().to_owned();
    (Agent::Spire(Box::new(spire)), issuer)
}

impl System {
    fn start(dir: &Path, on_spire: bool) -> Self {
        let (agent, issuer) = if on_spire { spire(dir) } else { dev_agent(dir) };
        let jwks = addr(free_port());
        std::fs::create_dir_all(dir.join("client")).unwrap();
        std::fs::create_dir_all(dir.join("server")).unwrap();
        let client_bridge = start_bridge(Sidecar::ClientBridge, dir, &agent, None);
        let server_bridge = start_bridge(Sidecar::ServerBridge, dir, &agent, Some(jwks));
        let helper_port = free_port();
        let helper = start_helper(dir, &agent, helper_port);

        let moto = Moto::start(dir);
        let proxy = StsProxy::start(moto.addr);
        proxy.set_lifetime(STS_LIFETIME);
        let broker_listen = addr(free_port());
        let broker = start_broker(dir, &agent, &proxy.url(), broker_listen);

        let vault = FakeVault::start(&issuer, CLIENT, None);
        vault.set_ttls(VAULT_TTL, VAULT_MAX_TTL);
        vault.put_secret(
            "soak/config",
            serde_json::json!({ "password": VAULT_VALUE }),
        );
        std::fs::create_dir_all(dir.join("vault")).unwrap();
        let vault_broker = start_vault_broker(dir, &agent, &vault, addr(free_port()));

        let azure_dir = dir.join("azure");
        std::fs::create_dir_all(&azure_dir).unwrap();
        let federated = FederatedCredential {
            issuer: issuer.clone(),
            subject: CLIENT.to_owned(),
            audience: azure::AUDIENCE.to_owned(),
        };
        let entra = azure::start_entra(&azure_dir, &federated);
        entra.set_lifetime(CLOUD_TOKEN_LIFETIME);
        let azure_broker = start_azure_broker(dir, &agent, &entra, addr(free_port()));
        let gcp_dir = dir.join("gcp");
        std::fs::create_dir_all(&gcp_dir).unwrap();
        let google = gcp::start_google(&gcp_dir, &issuer);
        google.set_lifetime(CLOUD_TOKEN_LIFETIME);
        let gcp_broker = start_gcp_broker(dir, &agent, &google, addr(free_port()));

        // The server: mTLS (SDS names as a VM's Envoy asks: the SPIFFE ID and `spiffe://<td>`)
        // + jwt_authn as the generator prints it.
        let echo = echo::start();
        let gen_args = |part: &str| {
            jwt_authn_config(&[
                "--trust-domain",
                TD,
                "--audience",
                AUDIENCE,
                "--jwks-address",
                &jwks.to_string(),
                // Envoy refetches the JWKS 5 s before this ends: every 5 s, well inside the
                // 15 s for which the dev agent publishes a key before signing with it (on
                // SPIRE, a prepared key is activated once Envoy fetched it).
                "--cache-duration",
                "10s",
                "--part",
                part,
            ])
        };
        let mtls_port = free_port();
        let server_envoy = Envoy::start(
            "envoy-server",
            dir,
            &bootstrap(
                free_port(),
                "server",
                &[mtls_listener_with_filters(
                    "mtls",
                    mtls_port,
                    &common_tls_context(Shape::Vm, "sds", SERVER, TD),
                    &gen_args("filters"),
                )],
                &[
                    sds_cluster("sds", &server_bridge.socket),
                    gen_args("cluster"),
                    static_cluster("upstream", echo, false),
                ],
            ),
        );
        // The client: two listeners to the server over mTLS, a new connection every 20
        // requests so rotated certificates keep being used.
        let (jwt_port, injector_port) = (free_port(), free_port());
        let ext_authz = ext_authz_filter("envoy_grpc:\n  cluster_name: ext_authz");
        let client_envoy = Envoy::start(
            "envoy-client",
            dir,
            &bootstrap(
                free_port(),
                "client",
                &[
                    filtered_listener("jwt", jwt_port, "", &ext_authz),
                    credential_injector_listener(
                        "injector",
                        injector_port,
                        "sds",
                        &format!("jwt-svid:{AUDIENCE}"),
                    ),
                ],
                &[
                    sds_cluster("sds", &client_bridge.socket),
                    static_cluster("ext_authz", addr(helper_port), true),
                    tls_cluster(
                        "upstream",
                        addr(mtls_port),
                        &common_tls_context(Shape::Istio, "sds", "", ""),
                        20,
                    ),
                ],
            ),
        );
        Self {
            dir: dir.to_path_buf(),
            agent,
            client_bridge,
            server_bridge,
            helper,
            helper_port,
            broker,
            broker_listen,
            vault,
            vault_broker,
            entra,
            azure_broker,
            google,
            gcp_broker,
            proxy,
            moto,
            client_envoy,
            server_envoy,
            jwks,
            jwt_port,
            injector_port,
            mtls_port,
        }
    }

    /// `(name, pid, admin)` of every sidecar, for the resource samples.
    fn sidecars(&self) -> Vec<(&'static str, u32, SocketAddr)> {
        vec![
            ("jwt-auth-helper", self.helper.proc.pid(), self.helper.admin),
            (
                "sds-bridge (client)",
                self.client_bridge.proc.pid(),
                self.client_bridge.admin,
            ),
            (
                "sds-bridge (server)",
                self.server_bridge.proc.pid(),
                self.server_bridge.admin,
            ),
            ("iam-broker aws", self.broker.proc.pid(), self.broker.admin),
            (
                "iam-broker vault",
                self.vault_broker.proc.pid(),
                self.vault_broker.admin,
            ),
            (
                "iam-broker azure",
                self.azure_broker.proc.pid(),
                self.azure_broker.admin,
            ),
            (
                "iam-broker gcp",
                self.gcp_broker.proc.pid(),
                self.gcp_broker.admin,
            ),
        ]
    }

    /// Seconds of validity left, now, on the credentials the sidecars hold from the agent:
    /// `(JWT-SVID, X.509-SVID)`, the least over the sidecars.
    fn held(&self) -> (f64, f64) {
        let jwt = [
            metric_min(self.helper.admin, "jwt_svid_expiry_seconds"),
            metric_min(self.client_bridge.admin, "jwt_svid_expiry_seconds"),
        ];
        let x509 = [
            metric_min(self.client_bridge.admin, "x509_svid_expiry_seconds"),
            metric_min(self.server_bridge.admin, "x509_svid_expiry_seconds"),
        ];
        (
            jwt.into_iter().fold(f64::INFINITY, f64::min),
            x509.into_iter().fold(f64::INFINITY, f64::min),
        )
    }
}

impl System {
    fn broker(&self, provider: Provider) -> &Broker {
        match provider {
            Provider::Aws => &self.broker,
            Provider::Vault => &self.vault_broker,
            Provider::Azure => &self.azure_broker,
            Provider::Gcp => &self.gcp_broker,
        }
    }

    fn broker_mut(&mut self, provider: Provider) -> &mut Broker {
        match provider {
            Provider::Aws => &mut self.broker,
            Provider::Vault => &mut self.vault_broker,
            Provider::Azure => &mut self.azure_broker,
            Provider::Gcp => &mut self.gcp_broker,
        }
    }

    /// Starts `provider`'s broker as [`System::start`] did, serving on `listen`.
    fn start_broker(&self, provider: Provider, listen: SocketAddr) -> Broker {
        let (dir, agent) = (&self.dir, &self.agent);
        match provider {
            Provider::Aws => start_broker(dir, agent, &self.proxy.url(), listen),
            Provider::Vault => start_vault_broker(dir, agent, &self.vault, listen),
            Provider::Azure => start_azure_broker(dir, agent, &self.entra, listen),
            Provider::Gcp => start_gcp_broker(dir, agent, &self.google, listen),
        }
    }

    /// Seconds of validity left, now, on the JWT-SVIDs the brokers present: the least.
    fn brokers_jwt(&self) -> f64 {
        Provider::ALL
            .into_iter()
            .map(|p| metric_min(self.broker(p).admin, "jwt_svid_expiry_seconds"))
            .fold(f64::INFINITY, f64::min)
    }
}

/// The least value of every series of `name` at `admin` (infinity if none or unreachable).
fn metric_min(admin: SocketAddr, name: &str) -> f64 {
    let Some((200, body)) = suite_tests::http(admin, "GET", "/metrics") else {
        return f64::INFINITY;
    };
    // Each sidecar prefixes its metrics (`sds_bridge_x509_svid_expiry_seconds`).
    body.lines()
        .filter(|l| {
            let series = l.split(['{', ' ']).next().unwrap_or_default();
            !l.starts_with('#') && series.ends_with(name)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min)
}

// === load ===

/// The paths the load takes; a failure is attributed to one.
const JWT_PATH: &str = "helper→mTLS→jwt_authn";
const INJECTOR_PATH: &str = "injector→mTLS→jwt_authn";
const CREDS_PATH: &str = "broker /v1/creds";
const SDK_PATH: &str = "boto3 get-caller-identity";
const VAULT_PATH: &str = "vault proxy KV read";
const AZURE_PATH: &str = "azure /msi/token";
const GCP_PATH: &str = "gcp metadata token";
/// Every path, in table order.
const PATHS: [&str; 7] = [
    JWT_PATH,
    INJECTOR_PATH,
    CREDS_PATH,
    SDK_PATH,
    VAULT_PATH,
    AZURE_PATH,
    GCP_PATH,
];

/// Checks one answer of the server's echo: 200, the identity `jwt_authn` put in
/// `x-spiffe-id`, and a client certificate that had not expired.
fn check_echo(record: &Shared, path: &'static str, r: Option<suite_tests::envoy::Response>) {
    let at = now();
    let fail = |what: String| {
        record
            .lock()
            .unwrap()
            .failures
            .push(Failure { at, path, what });
    };
    let Some(r) = r else {
        return fail("no response".into());
    };
    if r.status != 200 {
        if r.body.contains("Jwt is expired") {
            record.lock().unwrap().expired_tokens.push((at, path));
        }
        let body: String = r.body.trim().chars().take(120).collect();
        return fail(format!("{} {body}", r.status));
    }
    let Ok(echo) = serde_json::from_str::<serde_json::Value>(&r.body) else {
        return fail(format!(
            "not the echo: {}",
            r.body.chars().take(120).collect::<String>()
        ));
    };
    if echo["spiffe_id"] != CLIENT {
        return fail(format!("x-spiffe-id {}", echo["spiffe_id"]));
    }
    if echo["cert_not_after"].as_f64().is_none_or(|t| t < at - 1.0) {
        record.lock().unwrap().expired_certs += 1;
        return fail(format!(
            "client certificate notAfter {}",
            echo["cert_not_after"]
        ));
    }
    *record.lock().unwrap().ok.entry(path).or_default() += 1;
}

/// Checks one `/v1/creds` answer: 200 and an `Expiration` in the future.
fn check_creds(record: &Shared, r: Option<suite_tests::envoy::Response>) {
    let at = now();
    let result = r.ok_or("no response".to_owned()).and_then(|r| {
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.body.trim()));
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        // `YYYY-MM-DDTHH:MM:SSZ` (what STS, and so the broker, sends): compares as text.
        let exp = v["Expiration"].as_str().unwrap_or_default();
        if exp.get(..19).is_none_or(|e| e <= &rfc3339(at as u64)[..19]) {
            return Err(format!(
                "expired credentials handed out (Expiration {exp:?})"
            ));
        }
        Ok(())
    });
    tally(record, CREDS_PATH, at, result);
}

/// Checks one KV read through the vault proxy: 200 and the secret's value.
fn check_vault(record: &Shared, r: Option<suite_tests::envoy::Response>) {
    let at = now();
    let result = match r {
        None => Err("no response".to_owned()),
        Some(r) if r.status == 200 && r.body.contains(VAULT_VALUE) => Ok(()),
        Some(r) => Err(format!("{} {}", r.status, r.body.trim())),
    };
    tally(record, VAULT_PATH, at, result);
}

/// Checks one access token answer (App Service MSI or GCE metadata JSON): 200 and a token.
fn check_token(record: &Shared, path: &'static str, r: Option<suite_tests::envoy::Response>) {
    let at = now();
    let result = match r {
        None => Err("no response".to_owned()),
        Some(r) if r.status == 200 && r.body.contains("\"access_token\"") => Ok(()),
        Some(r) => Err(format!("{} {}", r.status, r.body.trim())),
    };
    tally(record, path, at, result);
}

fn tally(record: &Shared, path: &'static str, at: f64, result: Result<(), String>) {
    let mut rec = record.lock().unwrap();
    match result {
        Ok(()) => *rec.ok.entry(path).or_default() += 1,
        Err(what) => rec.failures.push(Failure { at, path, what }),
    }
}

fn load(
    record: &Shared,
    stop: &Arc<AtomicBool>,
    system: &System,
) -> Vec<std::thread::JoinHandle<()>> {
    let (jwt, injector, broker) = (system.jwt_port, system.injector_port, system.broker_listen);
    let (vault_proxy, azure, gcp) = (
        system.vault_broker.listen,
        system.azure_broker.listen,
        system.gcp_broker.listen,
    );
    let mut threads = Vec::new();
    for (path, port, workers) in [(JWT_PATH, jwt, 2), (INJECTOR_PATH, injector, 1)] {
        for _ in 0..workers {
            let (record, stop) = (record.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    check_echo(&record, path, request(addr(port), "GET", "/soak", &[]));
                }
            }));
        }
    }
    let (r, st) = (record.clone(), stop.clone());
    threads.push(std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            check_creds(&r, request(broker, "GET", "/v1/creds", &[]));
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    let (record, stop) = (record.clone(), stop.clone());
    threads.push(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let headers = [("X-Vault-Request", "true")];
            check_vault(&record, request(vault_proxy, "GET", VAULT_SECRET, &headers));
            let headers = [("X-IDENTITY-HEADER", IDENTITY_HEADER)];
            check_token(
                &record,
                AZURE_PATH,
                request(azure, "GET", AZURE_TOKEN, &headers),
            );
            let headers = [("Metadata-Flavor", "Google")];
            check_token(&record, GCP_PATH, request(gcp, "GET", GCP_TOKEN, &headers));
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    threads
}

/// boto3 with the container credentials provider pointed at the broker, calling moto's
/// `GetCallerIdentity` every 100 ms for `seconds`; one JSON line per call.
const SDK_LOOP: &str = r#"
import json, sys, time, boto3
end = time.time() + float(sys.argv[1])
out = open(sys.argv[2], "w", buffering=1)
sts = boto3.client("sts", endpoint_url=sys.argv[3], region_name="us-east-1")
while time.time() < end:
    t = time.time()
    try:
        arn = sts.get_caller_identity()["Arn"]
        out.write(json.dumps({"t": t, "ok": ":assumed-role/" in arn, "err": arn}) + "\n")
    except Exception as e:
        out.write(json.dumps({"t": t, "ok": False, "err": repr(e)[:300]}) + "\n")
    time.sleep(0.1)
"#;

fn sdk_loop(dir: &Path, seconds: f64, broker: SocketAddr, moto: &str) -> (Proc, PathBuf) {
    let python = python_with(&["boto3"]);
    let out = dir.join("sdk-loop.jsonl");
    let mut cmd = Command::new(python);
    cmd.args(["-c", SDK_LOOP, &seconds.to_string()])
        .arg(&out)
        .arg(moto)
        .env_clear()
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{broker}/v1/container-creds"),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", dir);
    (Proc::spawn("boto3-loop", cmd, dir), out)
}

fn read_sdk_loop(record: &Shared, out: &Path) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut rec = record.lock().unwrap();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["ok"].as_bool() == Some(true) {
            *rec.ok.entry(SDK_PATH).or_default() += 1;
        } else {
            rec.failures.push(Failure {
                at: v["t"].as_f64().unwrap_or(0.0),
                path: SDK_PATH,
                what: v["err"].as_str().unwrap_or("?").to_owned(),
            });
        }
    }
}

// === samples ===

#[derive(Clone, Debug)]
struct Sample {
    at: f64,
    rss_kib: u64,
    fds: u64,
    tasks: f64,
}

/// Per sidecar incarnation (name, pid): its start and its samples.
type Samples = BTreeMap<(&'static str, u32), (f64, Vec<Sample>)>;

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn sample(system: &System, samples: &mut Samples, started: &BTreeMap<u32, f64>) {
    for (name, pid, admin) in system.sidecars() {
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let tasks = metric_min(admin, "tokio_alive_tasks");
        if !tasks.is_finite() {
            continue; // restarting: not answering yet
        }
        let s = Sample {
            at: now(),
            rss_kib: suite_tests::procfs::rss_kib(pid),
            fds: fds(pid),
            tasks,
        };
        let start = started
            .get(&pid)
            .copied()
            .unwrap_or_else(|| START.get().copied().unwrap_or(0.0));
        samples
            .entry((name, pid))
            .or_insert((start, Vec::new()))
            .1
            .push(s);
    }
}

// === chaos ===

/// Kills the agent, keeps it down `down`, restarts it, and records the window in which the
/// sidecars held nothing valid (if any), ending when every sidecar holds fresh credentials.
fn agent_outage(system: &mut System, record: &Shared, down: f64, chaos: &mut Chaos) {
    // What the sidecars hold, as of `held_at` (read just before the kill).
    let held_at = now();
    let (jwt_left, x509_left) = system.held();
    // The brokers' own credentials from the agent's issuer: Vault's token is the one short
    // enough to run out during an outage (the clouds' 40 s tokens outlive it).
    let vault_left = metric_min(system.vault_broker.admin, "credentials_expiry_seconds");
    // And the JWT-SVIDs the brokers present: without one no exchange can even be tried.
    let brokers_jwt_left = system.brokers_jwt();
    chaos.agent_fetches += system.agent.jwt_fetches();
    let killed = now();
    system.agent.kill();
    event(
        record,
        format!(
            "agent SIGKILL, down {down:.1} s (held: JWT-SVID {jwt_left:.1} s, X.509-SVID {x509_left:.1} s left)"
        ),
    );
    std::thread::sleep(Duration::from_secs_f64(down));
    system.agent.start_again();
    let up = now();
    chaos.outages.push((killed, up));
    // Fresh again: every sidecar holds a credential with more life left than when the agent
    // would renew it.
    let (jwt_fresh, x509_fresh) = system.agent.fresh();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (jwt, x509) = system.held();
        if (jwt > jwt_fresh && x509 > x509_fresh) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fresh = now();
    // The Vault token is fresh again once the broker logged in anew (on the dev agent Vault
    // can verify the JWT-SVID only while the issuer's discovery document answers, i.e. the
    // agent; on SPIRE only once the broker holds a JWT-SVID again).
    let vault_deadline = Instant::now() + Duration::from_secs(30);
    while metric_min(system.vault_broker.admin, "credentials_expiry_seconds") < 2.0
        && Instant::now() < vault_deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let vault_fresh = now();
    // Every broker holds a JWT-SVID again (its cache refuses one in its last second).
    let jwt_deadline = Instant::now() + Duration::from_secs(30);
    while system.brokers_jwt() <= 1.0 && Instant::now() < jwt_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let brokers_fresh = now();
    let no_jwt_from = held_at + brokers_jwt_left - 1.0;
    if no_jwt_from < brokers_fresh {
        // A broker that found none tries again within its identity retry's longest delay.
        chaos
            .no_jwt
            .push((no_jwt_from, brokers_fresh + IDENTITY_RETRY_MAX));
    }
    // Below a tenth of its life (0.8 s of 8 s) the broker no longer hands a token out.
    let vault_none_from = held_at + vault_left - VAULT_TTL.as_secs_f64() / 10.0;
    if system.agent.spire().is_some() {
        // SPIRE's discovery provider answers throughout and renewals need no JWT-SVID: the
        // Vault token can run out only if a login fell due while the broker held none.
        if no_jwt_from < brokers_fresh {
            record.lock().unwrap().windows.push(Window {
                from: no_jwt_from,
                to: vault_fresh.max(brokers_fresh) + 0.5,
                paths: &[VAULT_PATH],
                why: "the vault broker's JWT-SVID ran out in the outage; no Vault login possible \
                      until the agent was back"
                    .to_owned(),
            });
        }
    } else if vault_none_from < vault_fresh {
        record.lock().unwrap().windows.push(Window {
            from: vault_none_from,
            to: vault_fresh + 0.5,
            paths: &[VAULT_PATH],
            why: format!(
                "Vault token ran out {:.1} s into the outage; no login possible until the issuer was back",
                vault_none_from - killed
            ),
        });
    }
    event(
        record,
        format!(
            "agent back after {:.1} s; sidecars fresh {:.2} s later",
            up - killed,
            fresh - up
        ),
    );
    // Nothing valid existed from the first expiry (a token is refused 1 s before its `exp`
    // by the cache's margin, a certificate at its notAfter) until the sidecars were fresh.
    let none_valid_from = held_at + (jwt_left - 1.0).min(x509_left);
    if none_valid_from < fresh {
        record.lock().unwrap().windows.push(Window {
            from: none_valid_from,
            to: fresh + 0.5,
            paths: &PATHS,
            why: format!(
                "agent down {:.1} s, longer than the credentials held ({:.1} s)",
                up - killed,
                (jwt_left - 1.0).min(x509_left)
            ),
        });
    }
}

/// What the chaos did, for the call-rate checks: the fault windows, and per broker its restarts
/// and the counters of its earlier incarnations (a process's counters start at zero, so each is
/// read just before the SIGTERM and added up).
#[derive(Debug, Default)]
struct Chaos {
    /// FetchJWTSVID calls of the agent's earlier incarnations.
    agent_fetches: u64,
    /// Agent outages: from the kill until it served again.
    outages: Vec<(f64, f64)>,
    /// Spans in which a broker may have held no JWT-SVID (one ran out during an outage), so no
    /// exchange could even be tried.
    no_jwt: Vec<(f64, f64)>,
    /// STS fault stretches: from, to, and whether calls fail in them (else they are slow).
    sts_faults: Vec<(f64, f64, bool)>,
    /// Per broker: its restarts, from the SIGTERM until it was ready again.
    restarts: BTreeMap<Provider, Vec<(f64, f64)>>,
    /// Per counter series: the sum over the broker's earlier incarnations.
    banked: BTreeMap<&'static str, u64>,
    /// Per broker: spans from a read of its counters to the end of that process, in which a
    /// stand-in may answer a call the broker never counts.
    blind: BTreeMap<Provider, Vec<(f64, f64)>>,
}

impl Chaos {
    /// The series' total over every incarnation of `broker`, the running one included.
    fn total(&self, broker: &Broker, series: &'static str) -> u64 {
        self.banked.get(series).copied().unwrap_or(0) + broker.metric(series)
    }
}

/// The sidecars stopped with SIGTERM and started again, in this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sidecar {
    Helper,
    ClientBridge,
    ServerBridge,
    Broker(Provider),
}

impl Sidecar {
    /// The workspace binary it runs.
    fn binary(self) -> &'static str {
        match self {
            Self::Helper => "jwt-auth-helper",
            Self::ClientBridge | Self::ServerBridge => "sds-bridge",
            Self::Broker(_) => "iam-broker",
        }
    }

    /// The name of its program on SPIRE: one executable path per workload.
    fn program(self) -> &'static str {
        match self {
            Self::Helper => "jwt-auth-helper",
            Self::ClientBridge => "sds-bridge-client",
            Self::ServerBridge => "sds-bridge-server",
            Self::Broker(Provider::Aws) => "iam-broker-aws",
            Self::Broker(Provider::Vault) => "iam-broker-vault",
            Self::Broker(Provider::Azure) => "iam-broker-azure",
            Self::Broker(Provider::Gcp) => "iam-broker-gcp",
        }
    }
}

const ROTATION: [Sidecar; 7] = [
    Sidecar::Helper,
    Sidecar::ClientBridge,
    Sidecar::ServerBridge,
    Sidecar::Broker(Provider::Aws),
    Sidecar::Broker(Provider::Vault),
    Sidecar::Broker(Provider::Azure),
    Sidecar::Broker(Provider::Gcp),
];

/// The four brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Provider {
    Aws,
    Vault,
    Azure,
    Gcp,
}

/// The brokers' counters of successful exchanges.
const STS_OK: &str = "iam_broker_sts_calls_total{outcome=\"success\"}";
const VAULT_LOGINS: &str =
    "iam_broker_token_exchanges_total{provider=\"vault\",outcome=\"success\"}";
const VAULT_RENEWALS: &str =
    "iam_broker_token_exchanges_total{provider=\"vault\",outcome=\"renewed\"}";
const AZURE_OK: &str = "iam_broker_token_exchanges_total{provider=\"azure\",outcome=\"success\"}";
const GCP_OK: &str = "iam_broker_token_exchanges_total{provider=\"gcp\",outcome=\"success\"}";

impl Provider {
    const ALL: [Self; 4] = [Self::Aws, Self::Vault, Self::Azure, Self::Gcp];

    fn name(self) -> &'static str {
        match self {
            Self::Aws => "iam-broker aws",
            Self::Vault => "iam-broker vault",
            Self::Azure => "iam-broker azure",
            Self::Gcp => "iam-broker gcp",
        }
    }

    /// The paths that cannot work while it restarts.
    fn paths(self) -> &'static [&'static str] {
        match self {
            Self::Aws => &[CREDS_PATH, SDK_PATH],
            Self::Vault => &[VAULT_PATH],
            Self::Azure => &[AZURE_PATH],
            Self::Gcp => &[GCP_PATH],
        }
    }

    fn series(self) -> &'static [&'static str] {
        match self {
            Self::Aws => &[STS_OK],
            Self::Vault => &[VAULT_LOGINS, VAULT_RENEWALS],
            Self::Azure => &[AZURE_OK],
            Self::Gcp => &[GCP_OK],
        }
    }
}

/// Stops a sidecar with SIGTERM, checks it exited 0, starts it again; records a window for
/// the paths that cannot work while it is gone. A broker's counters are banked first.
fn restart_sidecar(
    system: &mut System,
    record: &Shared,
    which: Sidecar,
    started: &mut BTreeMap<u32, f64>,
    chaos: &mut Chaos,
) {
    let from = now();
    let (name, paths): (&str, &'static [&'static str]) = match which {
        Sidecar::Helper => {
            let clean = system.helper.proc.terminate(Duration::from_secs(10));
            assert!(clean, "jwt-auth-helper did not exit 0 on SIGTERM");
            system.helper = start_helper(&system.dir, &system.agent, system.helper_port);
            started.insert(system.helper.proc.pid(), now());
            ("jwt-auth-helper", &[JWT_PATH])
        }
        Sidecar::ClientBridge => {
            let clean = system.client_bridge.proc.terminate(Duration::from_secs(10));
            assert!(clean, "sds-bridge did not exit 0 on SIGTERM");
            system.client_bridge =
                start_bridge(Sidecar::ClientBridge, &system.dir, &system.agent, None);
            started.insert(system.client_bridge.proc.pid(), now());
            // Envoy keeps the secrets it has while the SDS stream is gone: nothing may fail.
            ("sds-bridge (client; Envoy's SDS stream cut)", &[])
        }
        Sidecar::ServerBridge => {
            let clean = system.server_bridge.proc.terminate(Duration::from_secs(10));
            assert!(clean, "sds-bridge did not exit 0 on SIGTERM");
            system.server_bridge = start_bridge(
                Sidecar::ServerBridge,
                &system.dir,
                &system.agent,
                Some(system.jwks),
            );
            started.insert(system.server_bridge.proc.pid(), now());
            // Envoy keeps its secrets and its JWKS (async_fetch) while the bridge is gone.
            ("sds-bridge (server; SDS stream and JWKS cut)", &[])
        }
        Sidecar::Broker(provider) => {
            let read = now();
            let broker = system.broker(provider);
            for &series in provider.series() {
                *chaos.banked.entry(series).or_default() += broker.metric(series);
            }
            let listen = broker.listen;
            let clean = system
                .broker_mut(provider)
                .proc
                .terminate(Duration::from_secs(10));
            assert!(clean, "{} did not exit 0 on SIGTERM", provider.name());
            chaos.blind.entry(provider).or_default().push((read, now()));
            let broker = system.start_broker(provider, listen);
            started.insert(broker.proc.pid(), now());
            *system.broker_mut(provider) = broker;
            chaos
                .restarts
                .entry(provider)
                .or_default()
                .push((from, now()));
            (provider.name(), provider.paths())
        }
    };
    let to = now();
    event(
        record,
        format!(
            "{name}: SIGTERM (exit 0), restarted, ready in {:.2} s",
            to - from
        ),
    );
    if !paths.is_empty() {
        record.lock().unwrap().windows.push(Window {
            from,
            to: to + 0.5,
            paths,
            why: format!("{name} restarting"),
        });
    }
}

/// How long each call waits in the slow STS fault.
const STS_DELAY: Duration = Duration::from_secs(8);

/// STS failing for `secs` in one of three ways, then healthy again.
fn sts_fault(system: &System, record: &Shared, kind: usize, secs: f64, chaos: &mut Chaos) {
    let from = now();
    let (what, fails) = match kind % 3 {
        0 => {
            system.proxy.set_fault(Fault::Status(503));
            ("503", true)
        }
        1 => {
            system.proxy.set_fault(Fault::StsError(400, "Throttling"));
            ("Throttling", true)
        }
        _ => {
            system.proxy.set_delay(STS_DELAY);
            ("8 s delays", false)
        }
    };
    event(record, format!("STS fault for {secs:.0} s: {what}"));
    std::thread::sleep(Duration::from_secs_f64(secs));
    system.proxy.set_fault(Fault::Forward);
    system.proxy.set_delay(Duration::ZERO);
    chaos.sts_faults.push((from, now(), fails));
    event(record, "STS healthy".into());
}

/// Connects to every socket and port and writes junk: random bytes, an HTTP/1 request to the
/// gRPC ports, a truncated HTTP/2 preface; then closes.
fn garbage(system: &System, round: u64) {
    use std::os::unix::net::UnixStream;
    let junk: Vec<u8> = (0..2048u64)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(round * 97) >> 7) as u8)
        .collect();
    let payloads: [&[u8]; 3] = [
        &junk,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x40\x01\x04\x00\x00\x00\x01",
    ];
    let payload = payloads[(round % 3) as usize];
    for socket in [
        system.agent.socket(),
        &system.client_bridge.socket,
        &system.server_bridge.socket,
    ] {
        if let Ok(mut s) = UnixStream::connect(socket) {
            let _ = s.write_all(payload);
        }
    }
    for target in [
        addr(system.helper_port),
        system.helper.admin,
        system.client_bridge.admin,
        system.server_bridge.admin,
        system.jwks,
        system.broker_listen,
        system.broker.admin,
        system.vault_broker.listen,
        system.vault_broker.admin,
        system.azure_broker.listen,
        system.azure_broker.admin,
        system.gcp_broker.listen,
        system.gcp_broker.admin,
        addr(system.jwt_port),
        addr(system.injector_port),
        addr(system.mtls_port),
    ]
    .into_iter()
    .chain(system.agent.ports())
    {
        if let Ok(mut s) = std::net::TcpStream::connect(target) {
            let _ = s.write_all(payload);
        }
    }
}

// === SPIRE's forced authority rotations ===

/// One of SPIRE's local authorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Authority {
    X509,
    Jwt,
}

impl Authority {
    /// The `spire-server localauthority` subcommand.
    fn kind(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::X509 => "X.509 CA",
            Self::Jwt => "JWT key",
        }
    }
}

/// Where a rotation stands: each step is taken once what the previous one changed reached
/// everything that must see it.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Prepared: the new authority is in the bundle; waiting until the Envoys (X.509), or the
    /// bridge's JWKS and the discovery document (JWT), have it.
    Published,
    /// JWT: the key is at the bridge and the discovery provider; waiting until Envoy fetched
    /// the JWKS twice more (`fetches` as of then: a fetch in flight may predate the key).
    Fetching { fetches: u64 },
    /// The new authority activated and the old one tainted at `at`; waiting until nothing
    /// signed by the old one is in use: every certificate the Envoys present comes from the
    /// new CA and the agent renewed its own SVID since (`agent`: its pid and renewals then), or
    /// every JWT-SVID signed by the old key has expired.
    Tainted { at: f64, agent: (u32, f64) },
    /// The old authority revoked: waiting until it left the Envoys' validation contexts, or
    /// the bridge's JWKS and the discovery document.
    Revoked,
}

#[derive(Debug)]
struct Rotation {
    authority: Authority,
    old: String,
    new: String,
    step: Step,
    started: f64,
    step_since: f64,
}

/// The rotations of a run, for the table.
#[derive(Debug, Default)]
struct Rotations {
    running: Vec<Rotation>,
    /// Completed: which, and how long from `prepare` to the old authority gone.
    done: Vec<(Authority, f64)>,
    /// A step not reached in time, or a command refused; that authority is not rotated again.
    failed: Vec<(Authority, String)>,
}

impl Rotations {
    fn running(&self, authority: Authority) -> bool {
        self.running.iter().any(|r| r.authority == authority)
    }

    fn given_up(&self, authority: Authority) -> bool {
        self.failed.iter().any(|(a, _)| *a == authority)
    }

    /// Prepares a new `authority` (SPIRE only).
    fn begin(&mut self, system: &System, authority: Authority, record: &Shared) {
        let Some(spire) = system.agent.spire() else {
            return;
        };
        let kind = authority.kind();
        let begun = (|| {
            let old = spire
                .server
                .authority(kind, "active")
                .ok_or("no active authority")?;
            spire.server.localauthority(kind, "prepare", None)?;
            let new = spire
                .server
                .authority(kind, "prepared")
                .ok_or("nothing prepared")?;
            Ok::<_, String>((old, new))
        })();
        match begun {
            Ok((old, new)) => {
                event(
                    record,
                    format!(
                        "SPIRE {}: prepare {} (active {})",
                        authority.name(),
                        short(&new),
                        short(&old)
                    ),
                );
                self.running.push(Rotation {
                    authority,
                    old,
                    new,
                    step: Step::Published,
                    started: now(),
                    step_since: now(),
                });
            }
            Err(e) => self.failed.push((authority, format!("prepare: {e}"))),
        }
    }

    /// Takes every running rotation's next step that is due.
    fn advance(&mut self, system: &System, record: &Shared) {
        let running = std::mem::take(&mut self.running);
        for mut r in running {
            match advance(system, &mut r, record) {
                Ok(false) if now() - r.step_since > ROTATION_STEP_TIMEOUT => self.failed.push((
                    r.authority,
                    format!(
                        "{:?} not done {ROTATION_STEP_TIMEOUT:.0} s after the step began",
                        r.step
                    ),
                )),
                Ok(false) => self.running.push(r),
                Ok(true) => {
                    let took = now() - r.started;
                    event(
                        record,
                        format!(
                            "SPIRE {}: {} revoked and gone everywhere, {took:.1} s after prepare",
                            r.authority.name(),
                            short(&r.old)
                        ),
                    );
                    self.done.push((r.authority, took));
                }
                Err(e) => self.failed.push((r.authority, e)),
            }
        }
    }
}

/// The first characters of an authority ID, for the log.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Checks `r`'s current step and takes the next one if it is due; `Ok(true)` once the old
/// authority is gone everywhere.
fn advance(system: &System, r: &mut Rotation, record: &Shared) -> Result<bool, String> {
    let spire = system.agent.spire().ok_or("not on SPIRE")?;
    let kind = r.authority.kind();
    let envoys = [&system.client_envoy, &system.server_envoy];
    let next = match (r.authority, r.step) {
        (Authority::X509, Step::Published) => {
            let everywhere = envoys
                .iter()
                .all(|e| envoy_secrets(e).is_some_and(|s| s.cas.contains(&r.new)));
            everywhere
                .then(|| activate_and_taint(spire, r, record))
                .transpose()?
        }
        (Authority::Jwt, Step::Published) => {
            let published = jwks_has(system.jwks, &r.new)
                && spire
                    .oidc
                    .as_ref()
                    .is_some_and(|o| jwks_at(o.addr, "/keys", &r.new));
            published.then(|| Step::Fetching {
                fetches: envoy_counter(&system.server_envoy, "jwks_fetch_success"),
            })
        }
        (Authority::Jwt, Step::Fetching { fetches }) => {
            let fetched = envoy_counter(&system.server_envoy, "jwks_fetch_success") >= fetches + 2;
            fetched
                .then(|| activate_and_taint(spire, r, record))
                .transpose()?
        }
        (Authority::X509, Step::Tainted { agent, .. }) => {
            let renewed = agent_svid_renewals(spire);
            let agent_renewed = renewed.0 != agent.0 || renewed.1 > agent.1;
            let all_new = envoys.iter().all(|e| {
                envoy_secrets(e)
                    .is_some_and(|s| !s.leaves.is_empty() && s.leaves.iter().all(|a| *a == r.new))
            });
            (agent_renewed && all_new)
                .then(|| revoke(spire, r, record))
                .transpose()?
        }
        (Authority::Jwt, Step::Tainted { at, .. }) => {
            // Every token signed by the old key was issued before `at`, for `JWT_TTL` at most.
            (now() > at + JWT_TTL as f64 + 1.0)
                .then(|| revoke(spire, r, record))
                .transpose()?
        }
        (Authority::X509, Step::Revoked) => {
            let gone = envoys
                .iter()
                .all(|e| envoy_secrets(e).is_some_and(|s| !s.cas.contains(&r.old)));
            return Ok(gone);
        }
        (Authority::Jwt, Step::Revoked) => {
            let gone = !jwks_has(system.jwks, &r.old)
                && spire
                    .oidc
                    .as_ref()
                    .is_some_and(|o| !jwks_at(o.addr, "/keys", &r.old));
            return Ok(gone);
        }
        (Authority::X509, Step::Fetching { .. }) => {
            return Err(format!("{kind}: no JWKS step for a CA"));
        }
    };
    if let Some(step) = next {
        r.step = step;
        r.step_since = now();
    }
    Ok(false)
}

fn activate_and_taint(spire: &Spire, r: &Rotation, record: &Shared) -> Result<Step, String> {
    let kind = r.authority.kind();
    spire
        .server
        .localauthority(kind, "activate", Some(&r.new))?;
    spire.server.localauthority(kind, "taint", Some(&r.old))?;
    event(
        record,
        format!(
            "SPIRE {}: activate {}, taint {} ({:.1} s after prepare)",
            r.authority.name(),
            short(&r.new),
            short(&r.old),
            now() - r.started
        ),
    );
    Ok(Step::Tainted {
        at: now(),
        agent: agent_svid_renewals(spire),
    })
}

fn revoke(spire: &Spire, r: &Rotation, record: &Shared) -> Result<Step, String> {
    spire
        .server
        .localauthority(r.authority.kind(), "revoke", Some(&r.old))?;
    event(
        record,
        format!(
            "SPIRE {}: revoke {} ({:.1} s after prepare)",
            r.authority.name(),
            short(&r.old),
            now() - r.started
        ),
    );
    Ok(Step::Revoked)
}

/// The agent's pid and how many times it renewed its own SVID (SPIRE's telemetry).
fn agent_svid_renewals(spire: &Spire) -> (u32, f64) {
    (
        spire.agent.proc.pid(),
        spire.agent.metric_sum("spire_agent_agent_svid_rotate"),
    )
}

/// Whether the JWKS the bridge serves for the trust domain has key `kid`.
fn jwks_has(jwks: SocketAddr, kid: &str) -> bool {
    jwks_at(jwks, &format!("/jwks/{TD}"), kid)
}

fn jwks_at(addr: SocketAddr, path: &str, kid: &str) -> bool {
    suite_tests::http(addr, "GET", path).is_some_and(|(status, body)| {
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                v["keys"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid))
            })
    })
}

/// The sum of every Envoy counter whose name ends with `.<suffix>`.
fn envoy_counter(envoy: &Envoy, suffix: &str) -> u64 {
    envoy
        .stats_matching(suffix)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with(&format!(".{suffix}")))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// What an Envoy holds from SDS, by authority: the key IDs of the CAs that signed its
/// certificates (authority key ID, hex) and of the CAs in its validation contexts (subject key
/// ID, hex), as SPIRE names its local authorities.
struct EnvoySecrets {
    leaves: Vec<String>,
    cas: Vec<String>,
}

/// Reads `/config_dump?resource=dynamic_active_secrets` (Envoy redacts private keys only).
fn envoy_secrets(envoy: &Envoy) -> Option<EnvoySecrets> {
    let r = suite_tests::envoy::request(
        envoy.admin,
        "GET",
        "/config_dump?resource=dynamic_active_secrets",
        &[],
    )?;
    if r.status != 200 {
        return None;
    }
    let dump: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let mut out = EnvoySecrets {
        leaves: Vec::new(),
        cas: Vec::new(),
    };
    collect_certs(&dump, &mut out);
    Some(out)
}

fn collect_certs(v: &serde_json::Value, out: &mut EnvoySecrets) {
    use x509_parser::extensions::ParsedExtension;
    let Some(map) = v.as_object() else {
        if let Some(list) = v.as_array() {
            for item in list {
                collect_certs(item, out);
            }
        }
        return;
    };
    for (key, value) in map {
        let ders = || {
            value["inline_bytes"]
                .as_str()
                .map(|b| pem_ders(&base64_decode(b)))
                .unwrap_or_default()
        };
        let key_id = |der: &[u8], subject: bool| -> Option<String> {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            cert.extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) if subject => Some(k.0.to_vec()),
                    ParsedExtension::AuthorityKeyIdentifier(a) if !subject => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        };
        match key.as_str() {
            "certificate_chain" => out
                .leaves
                .extend(ders().first().and_then(|d| key_id(d, false))),
            "trust_bundle" | "trusted_ca" => out
                .cas
                .extend(ders().iter().filter_map(|d| key_id(d, true))),
            _ => collect_certs(value, out),
        }
    }
}

fn base64_decode(b: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

/// The DER of every certificate in a PEM bundle.
fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|block| block.split("-----END CERTIFICATE-----").next())
        .filter_map(|body| {
            let body: String = body.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD.decode(body).ok()
        })
        .collect()
}

// === the echo upstream ===

mod echo {
    use std::net::SocketAddr;

    /// An HTTP/1.1 server answering `{"spiffe_id", "cert_not_after"}`: the `x-spiffe-id`
    /// `jwt_authn` set and the `notAfter` (Unix seconds) of the client certificate in
    /// `x-forwarded-client-cert`. Keeps nothing per request, so it can run for hours.
    pub(super) fn start() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app =
                    axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
                        let get = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let not_after = cert_not_after(&get("x-forwarded-client-cert"));
                        axum::Json(serde_json::json!({
                            "spiffe_id": get("x-spiffe-id"),
                            "cert_not_after": not_after,
                        }))
                    });
                axum::serve(listener, app).await.unwrap();
            });
        });
        addr
    }

    fn cert_not_after(xfcc: &str) -> Option<i64> {
        let der = suite_tests::sds::xfcc_cert_der(xfcc)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        Some(cert.validity().not_after.timestamp())
    }
}

// === the run ===

struct Verdict {
    lines: Vec<(String, String, bool)>,
}

impl Verdict {
    fn check(&mut self, what: impl Into<String>, figure: impl Into<String>, ok: bool) {
        self.lines.push((what.into(), figure.into(), ok));
    }
}

fn in_window(windows: &[Window], f: &Failure) -> Option<usize> {
    windows
        .iter()
        .position(|w| w.paths.contains(&f.path) && f.at >= w.from && f.at <= w.to)
}

/// Sidecar restarts after the first round: one every this many seconds, in turn.
const RESTART_EVERY: f64 = 100.0;

fn run(dir: &Path, seconds: f64, on_spire: bool) -> bool {
    let record: Shared = Arc::default();
    let agent = if on_spire {
        "SPIRE server, agent and OIDC discovery provider (an entry per sidecar)"
    } else {
        "dev agent (with OIDC discovery)"
    };
    println!("starting: {agent}, {STARTS}; then the load and the boto3 loop");
    let mut system = System::start(dir, on_spire);
    let _ = START.set(now());
    let mut started: BTreeMap<u32, f64> = BTreeMap::new();
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(&record, &stop, &system);
    let (mut sdk, sdk_out) = sdk_loop(dir, seconds, system.broker_listen, &system.moto.url());
    let mut chaos = Chaos::default();
    let fetches_before = system.agent.jwt_fetches();
    let mut samples = Samples::new();
    event(&record, format!("load running for {seconds:.0} s"));

    // The schedule, in seconds from the start (repeating for long runs):
    // - every sidecar restarted once, in turn, at 5, 7, … 17 s (inside the warm-up), then one
    //   every 100 s in the same turn (each again after 700 s);
    // - an agent outage every 30 s from 20 s, every third one longer than a JWT half-life;
    // - an STS fault stretch of 6 s every 20 s from 26 s;
    // - garbage on every socket every 3 s; samples every 2 s.
    // One thing at a time: a restart, outage or fault due while another runs waits for it.
    // On SPIRE, forced rotations of the X.509 CA and the JWT key, each every 120 s: their
    // steps are taken between the other events, as what they wait for arrives.
    let mut next_restart = 5.0;
    let mut restarts = 0usize;
    let mut next_outage = 20.0;
    let mut outages = 0usize;
    let mut next_fault = 26.0;
    let mut faults = 0usize;
    let mut next_garbage = 3.0;
    let mut garbage_rounds = 0u64;
    let mut next_sample = 0.0;
    let mut rotations = Rotations::default();
    let mut next_rotation = [
        (Authority::X509, FIRST_X509_ROTATION),
        (Authority::Jwt, FIRST_JWT_ROTATION),
    ];
    while elapsed() < seconds - 2.0 {
        let t = elapsed();
        if on_spire {
            rotations.advance(&system, &record);
            for (authority, next) in &mut next_rotation {
                if t >= *next
                    && t + ROTATION_LEAD < seconds
                    && !rotations.running(*authority)
                    && !rotations.given_up(*authority)
                {
                    rotations.begin(&system, *authority, &record);
                    *next = t + AUTHORITY_ROTATION_EVERY;
                }
            }
        }
        if t >= next_sample {
            sample(&system, &mut samples, &started);
            next_sample = t + 2.0;
        }
        if t >= next_garbage {
            garbage(&system, garbage_rounds);
            garbage_rounds += 1;
            next_garbage = t + 3.0;
        }
        if t >= next_restart && t + 8.0 < seconds {
            let which = ROTATION[restarts % ROTATION.len()];
            restart_sidecar(&mut system, &record, which, &mut started, &mut chaos);
            restarts += 1;
            next_restart = if restarts < ROTATION.len() {
                t + 2.0
            } else {
                t + RESTART_EVERY
            };
        } else if t >= next_outage && t + (JWT_TTL as f64) < seconds {
            let long = outages.is_multiple_of(3);
            let down = if long {
                JWT_TTL as f64 / 2.0 + 1.5
            } else {
                1.5
            };
            agent_outage(&mut system, &record, down, &mut chaos);
            outages += 1;
            next_outage += 30.0;
        } else if t >= next_fault && t + 8.0 < seconds {
            sts_fault(&system, &record, faults, 6.0, &mut chaos);
            faults += 1;
            next_fault += 20.0;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sample(&system, &mut samples, &started);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    wait_until("the boto3 loop to finish", Duration::from_secs(30), || {
        !Path::new(&format!("/proc/{}", sdk.pid())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", sdk.pid()))
                .is_ok_and(|s| s.contains(") Z "))
    });
    sdk.kill();
    read_sdk_loop(&record, &sdk_out);
    let fetches = chaos.agent_fetches + system.agent.jwt_fetches() - fetches_before;
    let exchanges = exchanges(&system, &chaos, START.get().copied().unwrap_or(0.0), now());
    let duration = elapsed();

    // Every process must still be up.
    system.agent.assert_running();
    system.helper.proc.assert_running();
    system.client_bridge.proc.assert_running();
    system.server_bridge.proc.assert_running();
    system.broker.proc.assert_running();
    system.vault_broker.proc.assert_running();
    system.azure_broker.proc.assert_running();
    system.gcp_broker.proc.assert_running();
    system.client_envoy.wait_live(Duration::from_secs(5));
    system.server_envoy.wait_live(Duration::from_secs(5));

    report(
        &record.lock().unwrap(),
        &samples,
        Figures {
            duration,
            fetches,
            down: chaos.outages.iter().map(|(killed, up)| up - killed).sum(),
            exchanges,
            outages,
            restarts,
            sts_faults: faults,
            garbage_rounds,
            rotations: on_spire.then_some(rotations),
        },
    )
}

// === credential exchanges ===

/// One kind of exchange a broker makes: as its stand-in logged it, as the broker counted it,
/// and what the run allows.
#[derive(Debug)]
struct Exchange {
    what: &'static str,
    /// Successful and failed calls during the run, at the stand-in.
    ok: u64,
    failed: u64,
    /// What the run allows of `ok`.
    bounds: Bounds,
    /// The most failed calls the retry schedule fits into the run's fault windows.
    failed_most: u64,
    /// Seconds the broker spent retrying (the stand-in's view), and the most the fault windows
    /// can hold its refreshes up.
    retrying: f64,
    retrying_most: f64,
    /// Successful calls over the stand-in's whole life, and the broker's count summed over its
    /// incarnations (both from before the run: the first exchanges come at start-up).
    standin_ok: u64,
    broker_ok: u64,
    incarnations: u64,
    /// How far the two counts may differ: successful calls answered while the broker's
    /// counters were already read (just before a SIGTERM, or at the end), or so close to its
    /// deadline that the stand-in's clock cannot tell whether the broker still took them.
    undecided: u64,
}

/// A fault window as one broker sees it: the most failed calls it can make in it, and the
/// longest it can hold a refresh up.
type FaultWindow = (u64, f64);

/// Calls answered later than this margin after a fault window's end still met the fault.
const WINDOW_MARGIN: f64 = 0.5;

/// The figures of every kind of exchange, at `end` (the run from `start`).
fn exchanges(system: &System, chaos: &Chaos, start: f64, end: f64) -> Vec<Exchange> {
    // The brokers' counts first: a call answered between the two reads is in the stand-in's
    // count only, which the cross-check allows for.
    let brokers_read = now();
    let broker_ok = |p: Provider, series| chaos.total(system.broker(p), series);
    let (sts_ok, logins_ok, renewals_ok, azure_ok, gcp_ok) = (
        broker_ok(Provider::Aws, STS_OK),
        broker_ok(Provider::Vault, VAULT_LOGINS),
        broker_ok(Provider::Vault, VAULT_RENEWALS),
        broker_ok(Provider::Azure, AZURE_OK),
        broker_ok(Provider::Gcp, GCP_OK),
    );
    // A call the proxy answered after the broker's deadline is one the broker gave up on; one
    // answered within a second of it, either side, the broker may or may not have taken.
    let sts_calls = system.proxy.calls();
    let sts: Vec<Call> = sts_calls
        .iter()
        .filter(|c| c.answered > 0.0)
        .map(|c| Call {
            at: c.at,
            answered: c.answered,
            ok: c.status == 200 && c.answered - c.at < BROKER_ATTEMPT_TIMEOUT,
        })
        .collect();
    let sts_undecided = sts_calls
        .iter()
        .filter(|c| c.status == 200 && (c.answered - c.at - BROKER_ATTEMPT_TIMEOUT).abs() < 1.0)
        .count() as u64;
    let answered = |at: f64, status: u16| Call {
        at,
        answered: at,
        ok: status == 200,
    };
    let vault = system.vault.auth_calls();
    let vault_calls = |login: bool| -> Vec<Call> {
        vault
            .iter()
            .filter(|c| c.login == login)
            .map(|c| answered(c.at, c.status))
            .collect()
    };
    let entra: Vec<Call> = system
        .entra
        .calls()
        .iter()
        .map(|c| answered(c.at, c.status))
        .collect();
    let google: Vec<Call> = system
        .google
        .calls()
        .iter()
        .filter(|c| c.api == "sts")
        .map(|c| answered(c.at, c.status))
        .collect();
    let standins_read = now();

    // Fault windows. STS failing: each call in it fails. STS slow: the one call in it waits
    // 8 s, or past the broker's deadline, then is retried after the window. Agent down: the
    // stand-ins verifying JWT-SVIDs cannot fetch the issuer's keys and refuse every one (the
    // AWS stand-in, moto, does not verify them), until the agent serves again.
    let within = |w: f64| (rates::failures_in(w), rates::hold_up(w));
    let sts_windows: Vec<FaultWindow> = chaos
        .sts_faults
        .iter()
        .map(|&(from, to, fails)| {
            if fails {
                within(to - from + WINDOW_MARGIN)
            } else {
                (1, BROKER_ATTEMPT_TIMEOUT + rates::RETRY_FIRST)
            }
        })
        .collect();
    // On SPIRE the discovery provider reads keys from the server and answers throughout an
    // agent outage: no refusal is excused.
    let outage_windows: Vec<FaultWindow> = if system.agent.spire().is_some() {
        Vec::new()
    } else {
        chaos
            .outages
            .iter()
            .map(|&(killed, up)| within(up - killed + WINDOW_MARGIN))
            .collect()
    };

    // Intervals: the lifetimes the stand-ins issue. STS's expiration is in whole seconds (the
    // broker may measure up to 1 s less); the others count `expires_in` from their answer.
    let sts_interval = Interval::half_life(STS_LIFETIME as f64, 1.0);
    let cloud_interval = Interval::half_life(CLOUD_TOKEN_LIFETIME as f64, 0.1);
    let renew_interval = Interval::half_life(VAULT_TTL.as_secs_f64(), 0.1);
    let login_interval = Interval::relogin(
        VAULT_TTL.as_secs_f64(),
        VAULT_MAX_TTL.as_secs_f64(),
        renew_interval,
    );
    let vault_logins = vault_calls(true);
    // Renewals stop while a login fails (the capped token is served until it ends): the
    // logins' retrying excuses the renewals too.
    let in_run = |calls: &[Call]| -> Vec<Call> {
        calls
            .iter()
            .filter(|c| c.at >= start && c.at <= end)
            .copied()
            .collect()
    };
    let logins_retrying = rates::retrying(&in_run(&vault_logins), end);
    let figures = |what,
                   provider: Provider,
                   calls: Vec<Call>,
                   broker_ok,
                   interval,
                   windows: &[FaultWindow],
                   waiting_on_logins: f64,
                   undecided: u64| {
        let standin_ok = calls.iter().filter(|c| c.ok).count() as u64;
        let blind = chaos.blind.get(&provider).into_iter().flatten();
        let blind: Vec<(f64, f64)> = blind
            .copied()
            .chain([(brokers_read, standins_read)])
            .collect();
        let undecided = undecided
            + calls
                .iter()
                .filter(|c| {
                    c.ok && blind
                        .iter()
                        .any(|&(read, stopped)| c.at <= stopped && c.answered >= read)
                })
                .count() as u64;
        let calls = in_run(&calls);
        let ok = calls.iter().filter(|c| c.ok).count() as u64;
        let retrying = rates::retrying(&calls, end);
        let restarts = chaos.restarts.get(&provider).map_or(&[][..], Vec::as_slice);
        let restart_time: f64 = restarts.iter().map(|(from, to)| to - from).sum();
        let no_jwt: f64 = chaos.no_jwt.iter().map(|(from, to)| to - from).sum();
        let run = Run {
            duration: end - start,
            restarts: restarts.len() as u64,
            retrying,
            excused: waiting_on_logins + no_jwt + restart_time,
        };
        Exchange {
            what,
            ok,
            failed: calls.len() as u64 - ok,
            bounds: rates::successes(interval, run),
            failed_most: windows.iter().map(|w| w.0).sum(),
            retrying,
            retrying_most: windows.iter().map(|w| w.1).sum::<f64>() + no_jwt,
            standin_ok,
            broker_ok,
            incarnations: restarts.len() as u64 + 1,
            undecided,
        }
    };
    vec![
        figures(
            "aws: STS AssumeRoleWithWebIdentity",
            Provider::Aws,
            sts,
            sts_ok,
            sts_interval,
            &sts_windows,
            0.0,
            sts_undecided,
        ),
        figures(
            "vault: logins",
            Provider::Vault,
            vault_logins,
            logins_ok,
            login_interval,
            &outage_windows,
            0.0,
            0,
        ),
        figures(
            "vault: renewals",
            Provider::Vault,
            vault_calls(false),
            renewals_ok,
            renew_interval,
            &[],
            logins_retrying,
            0,
        ),
        figures(
            "azure: Entra ID token requests",
            Provider::Azure,
            entra,
            azure_ok,
            cloud_interval,
            &outage_windows,
            0.0,
            0,
        ),
        figures(
            "gcp: Google STS token exchanges",
            Provider::Gcp,
            google,
            gcp_ok,
            cloud_interval,
            &outage_windows,
            0.0,
            0,
        ),
    ]
}

struct Figures {
    duration: f64,
    fetches: u64,
    /// Seconds the agent was down.
    down: f64,
    exchanges: Vec<Exchange>,
    outages: usize,
    restarts: usize,
    sts_faults: usize,
    garbage_rounds: u64,
    /// SPIRE's forced authority rotations (on SPIRE only).
    rotations: Option<Rotations>,
}

fn report(record: &Record, samples: &Samples, f: Figures) -> bool {
    let mut v = Verdict { lines: Vec::new() };
    println!("\n=== chaos events");
    let start = START.get().copied().unwrap_or(0.0);
    for w in &record.windows {
        println!(
            "  window {:>6.1}–{:>6.1} s: {} (paths: {})",
            w.from - start,
            w.to - start,
            w.why,
            w.paths.join(", ")
        );
    }

    // Requests.
    let mut unexpected: BTreeMap<&str, Vec<&Failure>> = BTreeMap::new();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for failure in &record.failures {
        if in_window(&record.windows, failure).is_some() {
            *expected.entry(failure.path).or_default() += 1;
        } else {
            unexpected.entry(failure.path).or_default().push(failure);
        }
    }
    println!("\n=== requests");
    println!(
        "  {:<28} {:>9} {:>16} {:>11}",
        "path", "ok", "failed, expected", "unexpected"
    );
    for path in PATHS {
        let ok = record.ok.get(path).copied().unwrap_or(0);
        let exp = expected.get(path).copied().unwrap_or(0);
        let bad = unexpected.get(path).map_or(0, Vec::len);
        println!("  {path:<28} {ok:>9} {exp:>16} {bad:>11}");
        v.check(format!("{path}: requests served"), ok.to_string(), ok > 0);
        v.check(
            format!("{path}: failures while a valid credential existed"),
            bad.to_string(),
            bad == 0,
        );
        for failure in unexpected.get(path).into_iter().flatten().take(5) {
            println!("      at {:>6.1} s: {}", failure.at - start, failure.what);
        }
    }
    // jwt-auth-helper never stamps a token in its last second. credential_injector stamps the
    // last secret the bridge pushed, and SDS cannot take a secret back: once a token ran out
    // while nothing valid existed (an outage longer than its life), Envoy sends it until the
    // bridge pushes a fresh one, and the receiver refuses it ("Jwt is expired"). Only there is
    // an expired token allowed, and only on that path.
    let (in_window, outside): (Vec<&(f64, &str)>, Vec<_>) =
        record.expired_tokens.iter().partition(|(at, path)| {
            *path == INJECTOR_PATH
                && record
                    .windows
                    .iter()
                    .any(|w| w.paths.contains(path) && *at >= w.from && *at <= w.to)
        });
    v.check(
        "requests carrying an expired JWT-SVID while a valid one existed",
        format!(
            "{} ({} by credential_injector while none did)",
            outside.len(),
            in_window.len()
        ),
        outside.is_empty(),
    );
    v.check(
        "requests carrying an expired client certificate",
        record.expired_certs.to_string(),
        record.expired_certs == 0,
    );

    // Resources, per incarnation that ran at least 20 s past its warm-up.
    println!("\n=== resources after warm-up (first → last sample)");
    println!(
        "  {:<22} {:>7} {:>17} {:>9} {:>11}",
        "sidecar (pid)", "span s", "RSS KiB", "FDs", "tokio tasks"
    );
    let mut measured = 0;
    for ((name, pid), (started, list)) in samples {
        let steady: Vec<&Sample> = list.iter().filter(|s| s.at >= started + WARM_UP).collect();
        let (Some(first), Some(last)) = (steady.first(), steady.last()) else {
            continue;
        };
        let span = last.at - first.at;
        if span < 20.0 {
            continue;
        }
        measured += 1;
        // Medians of the first and last three samples, so one allocation spike does not decide.
        let med = |xs: &[&Sample], f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = xs.iter().map(|s| f(s)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let head = &steady[..steady.len().min(3)];
        let tail = &steady[steady.len().saturating_sub(3)..];
        let rss = (
            med(head, |s| s.rss_kib as f64),
            med(tail, |s| s.rss_kib as f64),
        );
        let fds = (med(head, |s| s.fds as f64), med(tail, |s| s.fds as f64));
        let tasks = (med(head, |s| s.tasks), med(tail, |s| s.tasks));
        println!(
            "  {:<22} {span:>7.0} {:>8.0}→{:<8.0} {:>4.0}→{:<4.0} {:>5.0}→{:<5.0}",
            format!("{name} ({pid})"),
            rss.0,
            rss.1,
            fds.0,
            fds.1,
            tasks.0,
            tasks.1
        );
        let growth = rss.1 / rss.0 - 1.0;
        v.check(
            format!("{name}: RSS growth after warm-up"),
            format!("{:+.1} %", growth * 100.0),
            growth < 0.10,
        );
        // Flat: connections come and go with the load, so allow a few either way.
        v.check(
            format!("{name}: open FDs"),
            format!("{:.0} → {:.0}", fds.0, fds.1),
            fds.1 <= fds.0 + 4.0,
        );
        v.check(
            format!("{name}: tokio tasks"),
            format!("{:.0} → {:.0}", tasks.0, tasks.1),
            tasks.1 <= tasks.0 + 6.0,
        );
    }
    v.check(
        "sidecar incarnations measured",
        measured.to_string(),
        measured >= 1,
    );

    // Calls upstream: FetchJWTSVID as the agent counted them, against the JWT caches' refresh
    // schedule with this agent (`rates::jwt_fetch_bounds`). Each outage may cost one call per
    // cache on reconnecting, each restart a cold one, each key change one.
    let key_changes = match &f.rotations {
        Some(r) => r.done.iter().filter(|(a, _)| *a == Authority::Jwt).count() as u64 + 1,
        None => (f.duration / JWT_KEY_ROTATION as f64) as u64,
    };
    let run = rates::JwtFetches {
        agent: if f.rotations.is_some() {
            rates::JwtAgent::Spire
        } else {
            rates::JwtAgent::Mints
        },
        ttl: JWT_TTL as f64,
        keys: JWT_KEYS.to_vec(),
        duration: f.duration,
        down: f.down,
        interruptions: (f.outages + f.restarts) as u64 + key_changes,
    };
    let fetch_bounds = rates::jwt_fetch_bounds(&run, rates::simulate_jwt_fetches(&run, 20));
    let one_per_half_life =
        JWT_KEYS.iter().sum::<u64>() as f64 * f.duration / (JWT_TTL as f64 / 2.0);
    v.check(
        "FetchJWTSVID calls vs the caches' refresh schedule",
        format!(
            "{} in [{:.0}, {:.0}] ({:.0} expected; {:.2}x one per cache per half-life)",
            f.fetches,
            fetch_bounds.low,
            fetch_bounds.high,
            fetch_bounds.expected,
            f.fetches as f64 / one_per_half_life
        ),
        fetch_bounds.hold(f.fetches),
    );
    if let Some(r) = &f.rotations {
        for authority in [Authority::X509, Authority::Jwt] {
            let took: Vec<f64> = r
                .done
                .iter()
                .filter(|(a, _)| *a == authority)
                .map(|(_, t)| *t)
                .collect();
            let failed: Vec<&String> = r
                .failed
                .iter()
                .filter(|(a, _)| *a == authority)
                .map(|(_, e)| e)
                .collect();
            let unfinished = r
                .running
                .iter()
                .filter(|x| x.authority == authority)
                .count();
            let span = took.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
                (lo.min(*t), hi.max(*t))
            });
            v.check(
                format!(
                    "SPIRE {} rotations (prepare, activate + taint, revoke), each step within {ROTATION_STEP_TIMEOUT:.0} s",
                    authority.name()
                ),
                format!(
                    "{} done ({:.1}–{:.1} s each), {} unfinished at the end{}",
                    took.len(),
                    span.0.min(span.1),
                    span.1,
                    unfinished,
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(", failed: {failed:?}")
                    }
                ),
                // One may still run when a short run ends (its steps wait on the Envoys).
                failed.is_empty() && took.len() + unfinished > 0,
            );
        }
    }

    // Credential exchanges, each kind bounded both ways (`suite_tests::rates`): successful ones
    // at one per refresh, counted where they are answered (the stand-ins log every call with
    // its time and status), since the brokers' own counters restart with each process; their
    // sum over the incarnations, read before each restart, must agree with the stand-in.
    //
    // Why counting every call against one per half-life overshot (a 50-minute run: 201 Entra ID
    // and 210 Google calls against 151 "expected"): the broker refreshes up to 10 % before
    // half-life (19 s on average for 40 s tokens, so 159 refreshes, not 151, in 3,000 s); and
    // while the agent was down (100 outages, a third of them 7.5 s) the stand-ins could not
    // fetch the issuer's keys and refused each JWT-SVID (AADSTS700210, `invalid_grant`),
    // which the broker retried after 0.5–1 s, 1–2 s, 2–4 s…: up to 3 calls in a 1.5 s outage,
    // 5 in a 7.5 s one. Those refusals are the rest, and are bounded on their own below.
    // Neither refusal makes a provider fetch a fresh JWT-SVID and try twice (Entra does that
    // only for AADSTS700024/700027, Google STS never), so an attempt is one call.
    println!(
        "\n=== credential exchanges, at the stand-ins ({} STS fault stretches, {} agent outages)",
        f.sts_faults, f.outages
    );
    println!(
        "  {:<36} {:>5} {:>16} {:>9} {:>6} {:>7} {:>13} {:>12}",
        "exchange", "ok", "bounds", "expected", "failed", "at most", "retrying s", "broker (runs)"
    );
    for x in &f.exchanges {
        println!(
            "  {:<36} {:>5} {:>16} {:>9.1} {:>6} {:>7} {:>6.1} ≤ {:<4.0} {:>6} ({})",
            x.what,
            x.ok,
            format!("[{:.1}, {:.1}]", x.bounds.low, x.bounds.high),
            x.bounds.expected,
            x.failed,
            x.failed_most,
            x.retrying,
            x.retrying_most,
            x.broker_ok,
            x.incarnations
        );
        v.check(
            format!("{}: successful vs one per refresh", x.what),
            format!(
                "{} in [{:.1}, {:.1}] ({:.1} expected)",
                x.ok, x.bounds.low, x.bounds.high, x.bounds.expected
            ),
            x.bounds.hold(x.ok),
        );
        v.check(
            format!(
                "{}: failed vs the retry schedule in the fault windows",
                x.what
            ),
            format!(
                "{} ≤ {}; retrying {:.1} s ≤ {:.1} s",
                x.failed, x.failed_most, x.retrying, x.retrying_most
            ),
            x.failed <= x.failed_most && x.retrying <= x.retrying_most,
        );
        v.check(
            format!(
                "{}: the broker's count over its {} incarnations vs the stand-in's",
                x.what, x.incarnations
            ),
            format!(
                "{} vs {} ({} undecided)",
                x.broker_ok, x.standin_ok, x.undecided
            ),
            x.broker_ok.abs_diff(x.standin_ok) <= x.undecided,
        );
    }

    println!(
        "\n=== verdict ({:.0} s, {} agent outages, {} sidecar restarts, {} garbage rounds)",
        f.duration, f.outages, f.restarts, f.garbage_rounds
    );
    let mut all = true;
    for (what, figure, ok) in &v.lines {
        all &= *ok;
        println!("  {} {what}: {figure}", if *ok { "ok  " } else { "FAIL" });
    }
    all
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 600.0;
    let mut on_spire = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--spire" {
            on_spire = true;
            continue;
        }
        let value = it.next().and_then(|v| v.parse::<f64>().ok());
        match (a.as_str(), value) {
            ("--minutes", Some(m)) if m > 0.0 => seconds = m * 60.0,
            ("--seconds", Some(s)) if s >= 45.0 => seconds = s,
            _ => {
                eprintln!("usage: soak [--spire] [--minutes N | --seconds N (>= 45)]");
                return ExitCode::from(2);
            }
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("spiffe-soak-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    on_signal_clean_up(
        dir.clone(),
        "interrupted: stopping everything the soak started",
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&dir, seconds, on_spire)
    }));
    match result {
        Ok(true) => {
            println!("\nsoak passed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nsoak FAILED (see the table); logs in {}", dir.display());
            let _ = tmp.keep();
            ExitCode::FAILURE
        }
        Err(_) => {
            println!(
                "\nsoak FAILED (see the message above); logs in {}",
                dir.display()
            );
            let _ = tmp.keep();
            ExitCode::FAILURE
        }
    }
}
