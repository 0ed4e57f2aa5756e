//! `cargo xtask demo`: the three sidecars with real Envoy, the AWS CLI and a local STS, then the
//! Azure and Google SDKs through iam-broker, all on loopback, step by step:
//!
//! 1. jwt-auth-helper stamps `authorization: Bearer <JWT-SVID>` on a plain request through the
//!    outbound Envoy; the inbound Envoy's `jwt_authn` (issuer and JWKS from the dev agent's OIDC
//!    discovery) accepts it; the same request without the helper gets 401;
//! 2. two Envoys talk mTLS with certificates from sds-bridge, and keep talking through a forced
//!    rotation (a VM's Envoy);
//! 3. `aws sts get-caller-identity` through `credential_process = curl -sf …/v1/creds` served
//!    by iam-broker, against moto as STS;
//! 4. the real Azure and Google SDKs (azure-identity's `DefaultAzureCredential`, google-auth's
//!    `google.auth.default()`) get tokens from `iam-broker azure` / `iam-broker gcp`, which trade
//!    the JWT-SVID with strict local stand-ins of Entra ID and Google STS (no such services can
//!    run here; they verify the JWT-SVID against the agent's OIDC discovery as the real ones do).
//!
//! The identities come from two `spiffe-dev-agent`s by default; with `--spire` (`cargo xtask demo
//! --spire`) from real SPIRE: a server, a join-token agent, SPIRE's OIDC discovery provider, and
//! one registration entry per sidecar binary (`unix:path` selectors).
//!
//! Exits non-zero if a step fails; every process it started is stopped on exit, on failure and
//! on Ctrl-C / SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use suite_tests::aws::{Broker, Moto, caller_identity, credential_process_profile, require_curl};
use suite_tests::envoy::{EchoServer, Envoy, Response, ext_authz_proxy, jwt_authn_proxy, request};
use suite_tests::sds::{MtlsPair, SdsBridge, Shape, common_tls_context, xfcc_uri_and_serial};
use suite_tests::sidecars::{JwtHelper, jwt_claims};
use suite_tests::spire::{ServerOptions, Spire};
use suite_tests::{DevAgent, bin, free_port, on_signal_clean_up, wait_until};

const TD: &str = "demo.example";
const CLIENT: &str = "spiffe://demo.example/ns/demo/sa/client";
const SERVER: &str = "spiffe://demo.example/ns/demo/sa/server";
const BACKEND_AUDIENCE: &str = "demo-backend";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(port: u16, path: &str) -> Option<Response> {
    request(addr(port), "GET", path, &[])
}

fn step(n: u8, title: &str) {
    println!("\n=== {n}. {title}");
}

fn ok(what: &str) {
    println!("  ok  {what}");
}

/// The token with its middle elided: enough to recognise, useless to steal.
fn elide(token: &str) -> String {
    format!(
        "{}…{}",
        &token[..12.min(token.len())],
        &token[token.len().saturating_sub(8)..]
    )
}

/// Where the identities come from.
enum Source {
    /// Two dev agents (client and server), the client's with OIDC discovery.
    Dev {
        client: Box<DevAgent>,
        server: Box<DevAgent>,
    },
    /// One SPIRE server and agent; the server-side bridge runs as its own binary path.
    Spire {
        spire: Box<Spire>,
        server_bridge: PathBuf,
    },
}

/// The identities every step uses.
struct Ids {
    source: Source,
    /// The JWT-SVIDs' issuer (its OIDC discovery).
    issuer: String,
}

impl Ids {
    fn dev(dir: &Path) -> Self {
        step(
            0,
            "dev SPIFFE agents (client and server identities of trust domain demo.example)",
        );
        let state = dir.join("state");
        let oidc = free_port();
        let issuer = format!("http://127.0.0.1:{oidc}");
        let (client_dir, server_dir) = (dir.join("client"), dir.join("server"));
        std::fs::create_dir_all(&client_dir).unwrap();
        std::fs::create_dir_all(&server_dir).unwrap();
        let state_arg = state.display().to_string();
        let client = DevAgent::start(
            &client_dir,
            &[
                "--trust-domain",
                TD,
                "--spiffe-id",
                CLIENT,
                "--state-dir",
                &state_arg,
                "--oidc-listen",
                &format!("127.0.0.1:{oidc}"),
                "--jwt-issuer",
                &issuer,
            ],
        );
        let server = DevAgent::start(
            &server_dir,
            &[
                "--trust-domain",
                TD,
                "--spiffe-id",
                SERVER,
                "--state-dir",
                &state_arg,
            ],
        );
        ok(&format!(
            "client agent {} (OIDC discovery {issuer})",
            client.endpoint
        ));
        ok(&format!("server agent {}", server.endpoint));
        Self {
            source: Source::Dev {
                client: Box::new(client),
                server: Box::new(server),
            },
            issuer,
        }
    }

    fn spire(dir: &Path) -> Self {
        step(
            0,
            "SPIRE server, agent and OIDC discovery provider (trust domain demo.example)",
        );
        // 20 s X.509-SVIDs: the agent renews them about every 5 s, so step 2 sees a rotation
        // (SPIRE has no per-workload "rotate now").
        let options = ServerOptions {
            x509_ttl: Duration::from_secs(20),
            ..ServerOptions::new(TD)
        };
        let spire = Spire::start(dir, &options);
        for name in ["jwt-auth-helper", "sds-bridge", "iam-broker"] {
            spire.register(&bin(name), CLIENT, &[]);
        }
        let server_bridge =
            spire.workload_binary(dir, "sds-bridge", "sds-bridge-server", SERVER, &[]);
        ok(&format!(
            "spire-server {}, spire-agent {} (Workload API {})",
            suite_tests::spire::VERSION,
            spire.agent.id,
            spire.agent.endpoint
        ));
        ok(&format!(
            "entries: jwt-auth-helper, sds-bridge, iam-broker -> {CLIENT}; {} -> {SERVER} (unix:path selectors)",
            server_bridge.display()
        ));
        let issuer = spire.issuer().to_owned();
        ok(&format!("SPIRE's OIDC discovery provider at {issuer}"));
        Self {
            source: Source::Spire {
                spire: Box::new(spire),
                server_bridge,
            },
            issuer,
        }
    }

    /// The client sidecars' Workload API.
    fn client(&self) -> &str {
        match &self.source {
            Source::Dev { client, .. } => &client.endpoint,
            Source::Spire { spire, .. } => &spire.agent.endpoint,
        }
    }

    /// Where the OIDC discovery document and keys are served.
    fn oidc(&self) -> SocketAddr {
        self.issuer.trim_start_matches("http://").parse().unwrap()
    }

    /// The server side's sds-bridge, ready.
    fn server_bridge(&self, dir: &Path) -> SdsBridge {
        let mut b = match &self.source {
            Source::Dev { server, .. } => {
                SdsBridge::start("sds-bridge-server", dir, &server.endpoint, &[])
            }
            Source::Spire {
                spire,
                server_bridge,
            } => SdsBridge::start_program(
                server_bridge,
                "sds-bridge-server",
                dir,
                &spire.agent.endpoint,
                &[],
                &[],
            ),
        };
        b.wait_ready(Duration::from_secs(30));
        b
    }

    /// Forces a rotation where the source can; SPIRE rotates on its own schedule.
    fn rotate(&self) {
        match &self.source {
            Source::Dev { client, server } => {
                println!("      forcing a rotation at both agents while requests keep flowing …");
                client.post("/rotate/x509");
                server.post("/rotate/x509");
            }
            Source::Spire { .. } => {
                println!("      waiting for SPIRE's next renewal while requests keep flowing …");
            }
        }
    }
}

fn jwt_step(dir: &Path, ids: &Ids) {
    let (client_endpoint, issuer, oidc) = (ids.client(), ids.issuer.as_str(), ids.oidc());
    step(
        1,
        "JWT-SVID stamped by jwt-auth-helper (ext_authz), checked by Envoy jwt_authn",
    );
    let mut helper = JwtHelper::start(dir, client_endpoint, &["--audience", BACKEND_AUDIENCE]);
    helper.wait_ready(Duration::from_secs(30));
    ok(&format!(
        "jwt-auth-helper ready on {} (audience {BACKEND_AUDIENCE})",
        helper.listen
    ));
    let backend = EchoServer::start();
    let inbound_port = free_port();
    let _inbound = Envoy::start(
        "envoy-inbound",
        dir,
        &jwt_authn_proxy(
            free_port(),
            inbound_port,
            backend.addr,
            issuer,
            &[BACKEND_AUDIENCE],
            oidc,
        ),
    );
    let outbound_port = free_port();
    let _outbound = Envoy::start(
        "envoy-outbound",
        dir,
        &ext_authz_proxy(
            free_port(),
            outbound_port,
            addr(inbound_port),
            helper.listen,
        ),
    );
    ok(&format!(
        "outbound Envoy :{outbound_port} (ext_authz -> helper) -> inbound Envoy :{inbound_port} (jwt_authn, JWKS {issuer}/keys) -> backend"
    ));

    let r = get(outbound_port, "/hello").expect("outbound Envoy answered");
    assert_eq!(
        r.status, 200,
        "request through the helper: {} {}",
        r.status, r.body
    );
    let echoed = r.json();
    let header = echoed["headers"]["authorization"]
        .as_str()
        .expect("authorization reached the backend");
    let token = header.strip_prefix("Bearer ").expect("a Bearer token");
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], CLIENT);
    ok(&format!(
        "GET via outbound Envoy -> 200; backend saw authorization: Bearer {}",
        elide(token)
    ));
    println!(
        "      claims: sub={} aud={} iss={} exp in {}s",
        claims["sub"],
        claims["aud"],
        claims["iss"],
        claims["exp"].as_i64().unwrap_or(0) - suite_tests::sidecars::unix_now()
    );
    let r = get(inbound_port, "/hello").expect("inbound Envoy answered");
    assert_eq!(
        r.status, 401,
        "request without the helper must be refused: {}",
        r.body
    );
    ok("GET straight to the inbound Envoy, no token -> 401 (jwt_authn)");
}

fn mtls_step(dir: &Path, ids: &Ids) {
    step(
        2,
        "mTLS between two Envoys, certificates from sds-bridge, through a rotation",
    );
    let mut client_bridge = SdsBridge::start("sds-bridge-client", dir, ids.client(), &[]);
    client_bridge.wait_ready(Duration::from_secs(30));
    let server_bridge = ids.server_bridge(dir);
    ok("sds-bridge per side, serving SDS on a Unix socket from its own Workload API identity");
    let backend = EchoServer::start();
    // The VM shape on the server: certificate = the SPIFFE ID, validation = spiffe://<td>.
    let pair = MtlsPair::start(
        dir,
        (
            &server_bridge.socket,
            &common_tls_context(Shape::Vm, "sds", SERVER, TD),
        ),
        (
            &client_bridge.socket,
            &common_tls_context(Shape::Istio, "sds", "", ""),
        ),
        backend.addr,
        // One request per connection, so every request shows the current certificate.
        1,
    );
    let (client_port, mtls_port) = (pair.port, pair.mtls_port);
    let seen = || {
        let r = get(client_port, "/").expect("client Envoy answered");
        assert_eq!(r.status, 200, "mTLS request: {} {}", r.status, r.body);
        xfcc_uri_and_serial(
            r.json()["headers"]["x-forwarded-client-cert"]
                .as_str()
                .unwrap(),
        )
    };
    let (uri, serial) = seen();
    assert_eq!(uri, CLIENT);
    ok(&format!(
        "client Envoy :{client_port} -> server Envoy :{mtls_port} (mTLS) -> backend: 200"
    ));
    println!("      server saw client {uri}, certificate serial {serial}");

    let started = Instant::now();
    ids.rotate();
    let mut requests = 0;
    let mut new_serial = serial.clone();
    wait_until(
        "the rotated client certificate at the server",
        Duration::from_secs(40),
        || {
            requests += 1;
            new_serial = seen().1;
            new_serial != serial
        },
    );
    ok(&format!(
        "rotated without a restart: serial {serial} -> {new_serial} after {:?}, {requests} requests, none failed",
        started.elapsed()
    ));
    assert_eq!(server_bridge.metric("sds_bridge_nacks_total"), 0.0);
}

fn aws_step(dir: &Path, ids: &Ids) {
    step(
        3,
        "aws sts get-caller-identity with credentials from iam-broker (moto as STS)",
    );
    require_curl();
    let moto = Moto::start(dir);
    ok(&format!("moto STS on {}", moto.url()));
    let mut broker = Broker::start(dir, ids.client(), &moto.url(), &[], &[]);
    broker.wait_ready(Duration::from_secs(30));
    ok(&format!(
        "iam-broker aws serving {}/v1/creds",
        broker.listen
    ));
    let command = format!("curl -sf http://{}/v1/creds", broker.listen);
    let config = credential_process_profile(dir, &command);
    println!("      ~/.aws/config: credential_process = {command}");
    let config_env = config.display().to_string();
    let arn = caller_identity(dir, &moto, &[("AWS_CONFIG_FILE", &config_env)])
        .unwrap_or_else(|e| panic!("aws sts get-caller-identity failed:\n{e}"));
    ok(&format!("aws sts get-caller-identity -> {arn}"));
    assert!(arn.contains(":assumed-role/demo/"), "{arn}");
}

fn clouds_step(dir: &Path, ids: &Ids) {
    let issuer = ids.issuer.as_str();
    use suite_tests::{azure, gcp};
    step(
        4,
        "Azure and Google SDKs get tokens from iam-broker azure / gcp (local Entra ID and STS stand-ins)",
    );
    let header = "demo-identity-header";
    let (entra, broker) = azure::start_with_entra(
        dir,
        ids.client(),
        &azure::FederatedCredential {
            issuer: issuer.to_owned(),
            subject: CLIENT.to_owned(),
            audience: azure::AUDIENCE.to_owned(),
        },
        header,
        &[],
        &[],
    );
    ok(&format!(
        "iam-broker azure serving http://{}/msi/token (Entra stand-in {})",
        broker.listen,
        entra.url()
    ));
    println!(
        "      app env: IDENTITY_ENDPOINT=http://{}/msi/token IDENTITY_HEADER=…",
        broker.listen
    );
    let scope = "https://storage.azure.com/.default";
    let got = azure::azure_identity(dir, &broker, header, "default", &[scope])
        .unwrap_or_else(|e| panic!("DefaultAzureCredential failed:\n{e}"));
    let token = got[scope]["token"].as_str().unwrap();
    assert!(entra.issued().iter().any(|t| t == token));
    ok(&format!(
        "azure-identity DefaultAzureCredential().get_token({scope:?}) -> {}",
        elide(token)
    ));
    drop(broker);

    let (google, broker) = gcp::start_with_google(
        dir,
        ids.client(),
        issuer,
        &["--service-account", gcp::SERVICE_ACCOUNT],
        &[],
        |_| {},
    );
    ok(&format!(
        "iam-broker gcp serving the metadata server on {} (STS stand-in {})",
        broker.listen,
        google.url()
    ));
    println!(
        "      app env: GCE_METADATA_HOST={0} GCE_METADATA_IP={0}",
        broker.listen
    );
    let got = gcp::google_auth(dir, &broker, &[])
        .unwrap_or_else(|e| panic!("google.auth.default() failed:\n{e}"));
    let token = got["token"].as_str().unwrap();
    assert!(google.issued().iter().any(|t| t == token));
    ok(&format!(
        "google-auth google.auth.default() -> {} as {}, project {}",
        elide(token),
        got["email"].as_str().unwrap_or("?"),
        got["project"].as_str().unwrap_or("?")
    ));
}

fn main() -> ExitCode {
    let spire = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--spire") => true,
        Some(other) => {
            eprintln!("usage: demo [--spire] (unknown argument {other:?})");
            return ExitCode::from(2);
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix("spiffe-demo-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    on_signal_clean_up(
        dir.clone(),
        "interrupted: stopping everything the demo started",
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ids = if spire {
            Ids::spire(&dir)
        } else {
            Ids::dev(&dir)
        };
        jwt_step(&dir, &ids);
        mtls_step(&dir, &ids);
        aws_step(&dir, &ids);
        clouds_step(&dir, &ids);
    }));
    // Every guard has dropped by now: processes stopped.
    drop(tmp);
    match result {
        Ok(()) => {
            println!("\ndemo finished: every process stopped, temporary files removed");
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!("\ndemo FAILED (see the message above); every process stopped");
            ExitCode::FAILURE
        }
    }
}
