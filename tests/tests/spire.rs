#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The sidecars against real SPIRE (server, join-token agent, SPIRE's OIDC discovery provider;
//! `suite_tests::spire` says how each sidecar gets its own SPIFFE ID) and real Envoy: JWT-SVIDs
//! stamped and checked with keys from sds-bridge and from SPIRE's own discovery document, mTLS
//! across SVID rotations and a forced CA rotation, JWT-SVIDs for credential_injector over SDS,
//! and every iam-broker provider exchanging SPIRE-issued tokens that the stand-ins verify the
//! way the clouds do, through SPIRE's OIDC discovery provider.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suite_tests::aws::{Broker, Moto, StsProxy, caller_identity, credential_process_profile};
use suite_tests::azure::{
    FederatedCredential, azure_identity, start_with_entra, verify_with_discovery,
};
use suite_tests::envoy::{
    EchoServer, Envoy, Response, ext_authz_proxy, jwt_authn_proxy, request, sds_secrets,
    static_cluster,
};
use suite_tests::gcp::{google_auth, start_with_google};
use suite_tests::sds::{
    MtlsPair, SdsBridge, Shape, bootstrap, common_tls_context, credential_injector_listener,
    filtered_listener, jwt_authn_config, sds_cluster, xfcc_uri_and_serial,
};
use suite_tests::sidecars::{JwtHelper, jwt_claims};
use suite_tests::spire::{ServerOptions, Spire, SpireAgent, SpireServer};
use suite_tests::vault::{FakeVault, hvac};
use suite_tests::{bin, free_port, wait_until};

const TD: &str = "example.org";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(port: u16, headers: &[(&str, &str)]) -> Option<Response> {
    request(addr(port), "GET", "/", headers)
}

/// A bridge running as its own workload `spiffe://example.org/<name>`, ready.
fn bridge(spire: &Spire, dir: &Path, name: &str, args: &[&str]) -> SdsBridge {
    bridge_with(spire, dir, name, args, &[])
}

/// [`bridge`] with entry options (`-federatesWith …`).
fn bridge_with(spire: &Spire, dir: &Path, name: &str, args: &[&str], entry: &[&str]) -> SdsBridge {
    let program = spire.workload_binary(
        dir,
        "sds-bridge",
        &format!("sds-bridge-{name}"),
        &spire.id(name),
        entry,
    );
    let mut bridge = SdsBridge::start_program(
        &program,
        &format!("bridge-{name}"),
        dir,
        &spire.agent.endpoint,
        args,
        &[],
    );
    bridge.wait_ready(Duration::from_secs(30));
    bridge
}

#[test]
fn jwt_auth_helper_stamps_spire_jwt_svids_that_jwt_authn_accepts_with_keys_from_the_bridge_and_from_spires_discovery()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spire = Spire::start(dir, &ServerOptions::new(TD));
    let client = spire.id("client");
    let backend = spire.id("backend");
    spire.register(&bin("jwt-auth-helper"), &client, &[]);
    let mut helper = JwtHelper::start(dir, &spire.agent.endpoint, &["--audience", &backend]);
    helper.wait_ready(Duration::from_secs(30));

    // Inbound A: what `sds-bridge jwt-authn-config` prints, keys from the bridge's JWKS.
    let jwks = addr(free_port());
    let _bridge = bridge(
        &spire,
        dir,
        "backend",
        &["--jwks-listen", &jwks.to_string()],
    );
    let echo = EchoServer::start();
    let generated = |part: &str| {
        jwt_authn_config(&[
            "--trust-domain",
            TD,
            "--audience",
            &backend,
            "--jwks-address",
            &jwks.to_string(),
            "--part",
            part,
        ])
    };
    let bridge_port = free_port();
    let inbound_bridge = Envoy::start(
        "inbound-bridge-jwks",
        dir,
        &bootstrap(
            free_port(),
            "backend",
            &[filtered_listener(
                "ingress",
                bridge_port,
                &generated("local-reply"),
                &generated("filters"),
            )],
            &[
                static_cluster("upstream", echo.addr, false),
                generated("cluster"),
            ],
        ),
    );
    // Inbound B: Istio's RequestAuthentication shape, issuer and keys from SPIRE's own OIDC
    // discovery provider (what any other relying party reads).
    let issuer = spire.issuer().to_owned();
    let oidc: SocketAddr = issuer.trim_start_matches("http://").parse().unwrap();
    let oidc_port = free_port();
    let inbound_oidc = Envoy::start(
        "inbound-spire-oidc",
        dir,
        &jwt_authn_proxy(
            free_port(),
            oidc_port,
            echo.addr,
            &issuer,
            &[&backend],
            oidc,
        ),
    );

    for (inbound_port, what) in [(bridge_port, "bridge JWKS"), (oidc_port, "SPIRE OIDC")] {
        let out_port = free_port();
        let _outbound = Envoy::start(
            "outbound",
            dir,
            &ext_authz_proxy(free_port(), out_port, addr(inbound_port), helper.listen),
        );
        let r = get(out_port, &[]).unwrap();
        assert_eq!(r.status, 200, "{what}: {r:?}");
        let seen = r.json();
        if inbound_port == bridge_port {
            // The generator's filters strip the token and pass the verified ID.
            assert_eq!(seen["headers"]["x-spiffe-id"], client.as_str(), "{seen}");
        } else {
            let auth = seen["headers"]["authorization"].as_str().unwrap();
            let claims = jwt_claims(auth.strip_prefix("Bearer ").unwrap());
            assert_eq!(claims["sub"], client.as_str());
            assert_eq!(claims["aud"], serde_json::json!([backend]));
            assert_eq!(
                claims["iss"],
                issuer.as_str(),
                "SPIRE sets iss from jwt_issuer"
            );
            let header: serde_json::Value = serde_json::from_slice(&base64_url(
                auth.strip_prefix("Bearer ")
                    .unwrap()
                    .split('.')
                    .next()
                    .unwrap(),
            ))
            .unwrap();
            assert_eq!(header["alg"], "ES256", "{header}");
            assert!(header["kid"].is_string(), "{header}");
        }
        // And without the helper: no token, 401.
        assert_eq!(get(inbound_port, &[]).unwrap().status, 401, "{what}");
    }
    assert_eq!(
        inbound_bridge.stat("http.ingress.jwt_authn.allowed"),
        Some(1)
    );
    assert_eq!(
        inbound_oidc.stat("http.ingress_http.jwt_authn.allowed"),
        Some(1)
    );
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// The authority key ID (hex) of the client certificate in an XFCC value: SPIRE's ID of the CA
/// that signed it.
fn authority_key_id(xfcc: &str) -> String {
    use x509_parser::extensions::ParsedExtension;
    let der = suite_tests::sds::xfcc_cert_der(xfcc).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki
                .key_identifier
                .as_ref()
                .map(|k| k.0.iter().map(|b| format!("{b:02x}")).collect()),
            _ => None,
        })
        .expect("an authority key ID")
}

/// The active X.509 authority's ID (`localauthority x509 show`).
fn authority(spire: &Spire, which: &str) -> String {
    let out = spire
        .server
        .cli(&["localauthority", "x509", "show", "-output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[which]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {which} authority in {v}"))
        .to_owned()
}

#[test]
fn mtls_between_envoys_with_spire_svids_survives_svid_rotations_and_a_ca_rotation_with_no_failed_request()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 20 s SVIDs. SPIRE backdates `notBefore` by 10 s and the agent renews at half of
    // notBefore→notAfter (±10 %), so these are renewed with about 15 s left: every ~5 s. (A
    // TTL of 10 s or less would be renewed at every cache sync.)
    let options = ServerOptions {
        x509_ttl: Duration::from_secs(20),
        oidc: false,
        ..ServerOptions::new(TD)
    };
    let spire = Spire::start(dir, &options);
    let server = bridge(&spire, dir, "server", &[]);
    let client = bridge(&spire, dir, "client", &[]);
    let echo = EchoServer::start();
    let istio = common_tls_context(Shape::Istio, "sds", "", "");
    let pair = MtlsPair::start(
        dir,
        (&server.socket, &istio),
        (&client.socket, &istio),
        echo.addr,
        20,
    );
    let port = pair.port;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    // Client certificates the server saw: serial → the CA that signed it (authority key ID).
    let seen = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let want = spire.id("client");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failures, seen, want) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                seen.clone(),
                want.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(port, &[]) {
                        Some(r) if r.status == 200 => {
                            let xfcc = r.json()["headers"]["x-forwarded-client-cert"]
                                .as_str()
                                .unwrap()
                                .to_owned();
                            let (uri, serial) = xfcc_uri_and_serial(&xfcc);
                            assert_eq!(uri, want);
                            seen.lock().unwrap().insert(serial, authority_key_id(&xfcc));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(
                            other.map_or("no response".to_owned(), |r| {
                                format!("{} {}", r.status, r.body)
                            }),
                        ),
                    }
                }
            })
        })
        .collect();
    let certs = || seen.lock().unwrap().len();
    let signed_by = |ca: &str| seen.lock().unwrap().values().filter(|a| *a == ca).count();
    let started = Instant::now();

    // Three SVID rotations of the client: four certificates seen by the server.
    wait_until(
        "three SPIRE SVID rotations",
        Duration::from_secs(60),
        || certs() >= 4,
    );
    let rotations = started.elapsed();

    // A CA rotation as an operator forces it: prepare, activate (new SVIDs come from the new
    // CA), taint the old CA (agents re-issue what it signed at once), then revoke it (out of
    // every bundle: a certificate it signed is refused from then on).
    let old = authority(&spire, "active");
    assert!(seen.lock().unwrap().values().all(|a| *a == old));
    spire.server.cli(&["localauthority", "x509", "prepare"]);
    let new = authority(&spire, "prepared");
    // As SPIRE's rotation guide says: activate only once the prepared CA has reached every
    // agent and workload. The server's own serving certificate moves to the new CA at
    // activation, and an agent whose bundle lacks it cannot verify the server: it gives up
    // its sync as non-recoverable and exits. Both Envoys' validation contexts holding the
    // new CA shows it went agent → bridge → Envoy.
    wait_until(
        "the prepared CA in both Envoys' validation contexts",
        Duration::from_secs(60),
        || {
            [&pair.server, &pair.client]
                .iter()
                .all(|e| sds_secrets(e).is_some_and(|s| s.cas.contains(&new)))
        },
    );
    spire
        .server
        .cli(&["localauthority", "x509", "activate", "-authorityID", &new]);
    wait_until(
        "a client SVID from the new CA",
        Duration::from_secs(60),
        || signed_by(&new) >= 1,
    );
    spire
        .server
        .cli(&["localauthority", "x509", "taint", "-authorityID", &old]);
    let before = (server.metric("sds_bridge_pushes_total"), signed_by(&new));
    wait_until(
        "SVIDs re-issued after the taint",
        Duration::from_secs(60),
        || server.metric("sds_bridge_pushes_total") > before.0 && signed_by(&new) > before.1,
    );
    spire
        .server
        .cli(&["localauthority", "x509", "revoke", "-authorityID", &old]);
    let before = signed_by(&new);
    wait_until(
        "two more rotations on the new CA alone",
        Duration::from_secs(60),
        || signed_by(&new) >= before + 2,
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    eprintln!(
        "{} requests in {:?} (three rotations after {rotations:?}), {} failed, {} client certificates ({} from the new CA)",
        ok.load(Ordering::Relaxed),
        started.elapsed(),
        failures.len(),
        certs(),
        signed_by(&new),
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_ne!(old, new);
    let bundle = spire.server.bundle_pem();
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        1,
        "the old CA left the bundle"
    );
    for b in [&server, &client] {
        assert_eq!(b.metric("sds_bridge_nacks_total"), 0.0);
    }
    assert_eq!(
        pair.client
            .stat("cluster.mtls.upstream_cx_connect_fail")
            .unwrap_or(0),
        0
    );
}

#[test]
fn credential_injector_gets_spire_jwt_svids_over_sds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spire = Spire::start(dir, &ServerOptions::new(TD));
    let client = bridge(&spire, dir, "client", &["--allow-jwt-audience", "backend"]);
    let echo = EchoServer::start();
    let port = free_port();
    let _envoy = Envoy::start(
        "envoy",
        dir,
        &bootstrap(
            free_port(),
            "client",
            &[credential_injector_listener(
                "to_backend",
                port,
                "sds",
                "jwt-svid:backend",
            )],
            &[
                sds_cluster("sds", &client.socket),
                static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    let r = get(port, &[]).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let auth = r.json()["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = auth.strip_prefix("Bearer ").unwrap();
    // A SPIRE-signed token for the bridge's own identity, checked as a relying party would.
    let claims = verify_with_discovery(spire.issuer(), token, "backend").unwrap();
    assert_eq!(claims["sub"], spire.id("client").as_str());
}

#[test]
fn every_iam_broker_provider_trades_spire_jwt_svids_that_the_stand_ins_verify_through_spires_discovery()
 {
    suite_tests::aws::require_curl();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spire = Spire::start(dir, &ServerOptions::new(TD));
    let web = spire.id("ns/default/sa/web");
    spire.register(&bin("iam-broker"), &web, &[]);
    let issuer = spire.issuer().to_owned();

    // AWS: moto does not check the token; the proxy in front records it and it is checked here
    // as STS checks it (issuer discovery, signature, audience).
    let aws_dir = dir.join("aws");
    std::fs::create_dir_all(&aws_dir).unwrap();
    let moto = Moto::start(&aws_dir);
    let proxy = StsProxy::start(moto.addr);
    let mut aws = Broker::start(&aws_dir, &spire.agent.endpoint, &proxy.url(), &[], &[]);
    aws.wait_ready(Duration::from_secs(30));
    let profile = credential_process_profile(
        &aws_dir,
        &format!("curl -sf http://127.0.0.1:{}/v1/creds", aws.listen.port()),
    );
    let arn = caller_identity(
        &aws_dir,
        &moto,
        &[("AWS_CONFIG_FILE", profile.to_str().unwrap())],
    )
    .unwrap();
    assert!(arn.contains(":assumed-role/demo/"), "{arn}");
    let call = &proxy.calls()[0];
    let claims = verify_with_discovery(&issuer, &call.token, suite_tests::aws::AUDIENCE).unwrap();
    assert_eq!(claims["sub"], web.as_str());

    // Azure: Entra's federated credential matches iss, sub and audience exactly.
    let az_dir = dir.join("azure");
    std::fs::create_dir_all(&az_dir).unwrap();
    let (entra, az) = start_with_entra(
        &az_dir,
        &spire.agent.endpoint,
        &FederatedCredential {
            issuer: issuer.clone(),
            subject: web.clone(),
            audience: suite_tests::azure::AUDIENCE.to_owned(),
        },
        "header-secret",
        &[],
        &[],
    );
    let scope = "https://storage.azure.com/.default";
    let got = azure_identity(&az_dir, &az, "header-secret", "managed", &[scope])
        .unwrap_or_else(|e| panic!("azure-identity: {e}"));
    assert!(
        entra
            .issued()
            .iter()
            .any(|t| t == got[scope]["token"].as_str().unwrap())
    );

    // Google: STS verifies the subject token through the issuer's discovery.
    let gcp_dir = dir.join("gcp");
    std::fs::create_dir_all(&gcp_dir).unwrap();
    let (google, gcp) =
        start_with_google(&gcp_dir, &spire.agent.endpoint, &issuer, &[], &[], |_| {});
    let got = google_auth(&gcp_dir, &gcp, &[]).unwrap_or_else(|e| panic!("google-auth: {e}"));
    assert!(
        google
            .issued()
            .iter()
            .any(|t| t == got["token"].as_str().unwrap())
    );

    // Vault: JWT auth with the role bound to the SPIFFE ID, keys through discovery.
    let vault_dir = dir.join("vault");
    std::fs::create_dir_all(&vault_dir).unwrap();
    let vault = FakeVault::start(&issuer, &web, None);
    vault.put_secret("app/config", serde_json::json!({"password": "s3cr3t"}));
    let ca = vault.write_ca(&vault_dir);
    let url = vault.url();
    let vb = suite_tests::azure::start_broker(
        &vault_dir,
        &spire.agent.endpoint,
        &[
            "vault",
            "--vault-addr",
            &url,
            "--role",
            suite_tests::vault::ROLE,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    let got = hvac(
        &vault_dir,
        &format!("http://{}", vb.listen),
        &[],
        &["read", "app/config"],
    )
    .unwrap_or_else(|e| panic!("hvac: {e}"));
    assert_eq!(got["password"], "s3cr3t");
    assert_eq!(vault.count(|c| &c.logins), 1);
}

/// Requests through an outbound Envoy whose ext_authz is jwt-auth-helper, counted until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let worker = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match get(port, &[]) {
                    Some(r)
                        if r.status == 200 && r.json()["headers"]["authorization"].is_string() =>
                    {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => f.lock().unwrap().push(format!("{other:?}")),
                }
            }
        });
        Self {
            stop,
            ok,
            failures,
            worker: Some(worker),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops and returns (successes, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            w.join().unwrap();
        }
        (self.ok(), self.failures.lock().unwrap().clone())
    }
}

#[test]
fn sidecars_started_before_spire_become_ready_and_ride_out_an_agent_crash_and_a_server_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = ServerOptions {
        oidc: false,
        ..ServerOptions::new(TD)
    };
    let server = SpireServer::start(dir, &options);
    // The sidecars first, pointed at the agent's socket before it exists.
    let endpoint = SpireAgent::planned_endpoint(dir, TD);
    let backend = "spiffe://example.org/backend";
    let mut helper = JwtHelper::start(dir, &endpoint, &["--audience", backend]);
    let mut sds = SdsBridge::start("sds-bridge", dir, &endpoint, &[]);
    assert_ne!(helper.readyz(), 200);
    assert_ne!(sds.readyz(), 200);

    let spire = Spire::with_server(dir, server, &options);
    spire.register(&bin("jwt-auth-helper"), &spire.id("client"), &[]);
    spire.register(&bin("sds-bridge"), &spire.id("client"), &[]);
    let registered = Instant::now();
    helper.wait_ready(Duration::from_secs(60));
    sds.wait_ready(Duration::from_secs(60));
    eprintln!(
        "ready {:?} after the entries were created",
        registered.elapsed()
    );

    let echo = EchoServer::start();
    let port = free_port();
    let _outbound = Envoy::start(
        "outbound",
        dir,
        &ext_authz_proxy(free_port(), port, echo.addr, helper.listen),
    );
    let load = Load::start(port);
    wait_until("requests flowing", Duration::from_secs(10), || {
        load.ok() > 10
    });
    let mut spire = spire;

    // The agent crashes: cached tokens and the held SVID keep serving; both stay ready.
    spire.agent.kill();
    let connected = "sds_bridge_workload_api_x509_stream_connected";
    wait_until("the bridge notices", Duration::from_secs(10), || {
        sds.metric(connected) == 0.0
    });
    let during = load.ok();
    wait_until(
        "requests while the agent is down",
        Duration::from_secs(10),
        || load.ok() > during + 50,
    );
    assert_eq!(helper.readyz(), 200);
    assert_eq!(sds.readyz(), 200);
    spire.agent.start_again();
    wait_until(
        "the bridge reconnects, no restart",
        Duration::from_secs(30),
        || sds.metric(connected) == 1.0,
    );

    // The server goes away for a while: the agent serves from its cache, and so do we.
    spire.server.stop();
    let during = load.ok();
    wait_until(
        "requests while the server is down",
        Duration::from_secs(10),
        || load.ok() > during + 50,
    );
    assert_eq!(helper.readyz(), 200);
    assert_eq!(sds.readyz(), 200);
    spire.server.restart();
    let during = load.ok();
    wait_until(
        "requests after the server is back",
        Duration::from_secs(10),
        || load.ok() > during + 50,
    );
    let (ok, failures) = load.finish();
    eprintln!("{ok} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_deleted_entry_takes_the_identity_away_within_seconds_and_readyz_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spire = Spire::start(
        dir,
        &ServerOptions {
            oidc: false,
            ..ServerOptions::new(TD)
        },
    );
    let id = spire.id("client");
    let helper_entry = spire.register(&bin("jwt-auth-helper"), &id, &[]);
    let bridge_entry = spire.register(&bin("sds-bridge"), &id, &[]);
    let mut helper = JwtHelper::start(dir, &spire.agent.endpoint, &["--audience", "backend"]);
    let mut sds = SdsBridge::start("sds-bridge", dir, &spire.agent.endpoint, &[]);
    helper.wait_ready(Duration::from_secs(60));
    sds.wait_ready(Duration::from_secs(60));
    let echo = EchoServer::start();
    let port = free_port();
    let _outbound = Envoy::start(
        "outbound",
        dir,
        &ext_authz_proxy(free_port(), port, echo.addr, helper.listen),
    );
    assert_eq!(get(port, &[]).unwrap().status, 200);

    // An operator deletes the entries: SPIRE ends the workloads' streams with
    // PermissionDenied ("no identity issued").
    spire.server.delete_entry(&helper_entry);
    spire.server.delete_entry(&bridge_entry);
    let deleted = Instant::now();
    wait_until("the bridge not ready", Duration::from_secs(30), || {
        sds.readyz() != 200
    });
    let bridge_after = deleted.elapsed();
    wait_until("the helper not ready", Duration::from_secs(30), || {
        helper.readyz() != 200
    });
    let helper_after = deleted.elapsed();
    wait_until("no token stamped", Duration::from_secs(30), || {
        get(port, &[]).is_some_and(|r| r.status != 200)
    });
    let stamped_until = deleted.elapsed();
    eprintln!(
        "after the entries were deleted: bridge not ready in {bridge_after:?}, helper in {helper_after:?}, last token stamped before {stamped_until:?}"
    );
    let (status, body) = suite_tests::http(sds.admin, "GET", "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no identity"), "{body}");
    assert!(helper.metric("jwt_auth_helper_jwt_cache_withdrawals_total") >= 1.0);

    // Registered again: both recover without a restart.
    spire.register(&bin("jwt-auth-helper"), &id, &[]);
    spire.register(&bin("sds-bridge"), &id, &[]);
    helper.wait_ready(Duration::from_secs(60));
    sds.wait_ready(Duration::from_secs(60));
    wait_until("tokens stamped again", Duration::from_secs(30), || {
        get(port, &[]).is_some_and(|r| r.status == 200)
    });
}

#[test]
fn federated_spire_trust_domains_do_mtls_and_jwt_across_and_a_dropped_federation_is_refused_within_seconds()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let federating = |td: &str| ServerOptions {
        oidc: false,
        bundle_endpoint: true,
        ..ServerOptions::new(td)
    };
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let a = Spire::start(&a_dir, &federating(TD));
    let b = Spire::start(&b_dir, &federating("partner.org"));
    a.server.federate_with(&b.server);
    b.server.federate_with(&a.server);

    // example.org's server side: SDS and the per-trust-domain JWKS, federated with partner.org.
    let jwks = addr(free_port());
    let server = bridge_with(
        &a,
        &a_dir,
        "server",
        &["--jwks-listen", &jwks.to_string()],
        &["-federatesWith", "spiffe://partner.org"],
    );
    // partner.org's client side: SDS and jwt-auth-helper, federated with example.org.
    let client = bridge_with(
        &b,
        &b_dir,
        "client",
        &[],
        &["-federatesWith", "spiffe://example.org"],
    );
    let partner_client = b.id("client");
    b.register(
        &bin("jwt-auth-helper"),
        &partner_client,
        &["-federatesWith", "spiffe://example.org"],
    );
    let audience = a.id("server");
    let mut helper = JwtHelper::start(&b_dir, &b.agent.endpoint, &["--audience", &audience]);
    helper.wait_ready(Duration::from_secs(60));

    // The federated bundle reaches the bridge: partner.org's JWT keys in its JWKS.
    let partner_kids = b.server.jwt_kids();
    wait_until(
        "partner.org's JWT keys at the bridge",
        Duration::from_secs(60),
        || {
            request(jwks, "GET", "/jwks/partner.org", &[]).is_some_and(|r| {
                r.status == 200 && partner_kids.iter().all(|kid| r.body.contains(kid.as_str()))
            })
        },
    );

    // mTLS: the server trusts ALL bundles it has; the client presents its partner.org SVID.
    let echo = EchoServer::start();
    let all = common_tls_context(Shape::All, "sds", "", "");
    // One request per connection: every request is a new handshake, so the time to refusal
    // below is the bundle's, not a pooled connection's.
    let pair = MtlsPair::start(
        dir,
        (&server.socket, &all),
        (&client.socket, &all),
        echo.addr,
        1,
    );
    let mtls_client_port = pair.port;
    wait_until("cross-domain mTLS", Duration::from_secs(30), || {
        get(mtls_client_port, &[]).is_some_and(|r| r.status == 200)
    });
    let r = get(mtls_client_port, &[]).unwrap();
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(xfcc_uri_and_serial(&xfcc).0, partner_client);

    // JWT: partner.org's token, checked by example.org's Envoy with one provider per trust
    // domain and keys from the bridge.
    let generated = |part: &str| {
        jwt_authn_config(&[
            "--trust-domain",
            TD,
            "--trust-domain",
            "partner.org",
            "--audience",
            &audience,
            "--jwks-address",
            &jwks.to_string(),
            "--cache-duration",
            "6s",
            "--part",
            part,
        ])
    };
    let inbound_port = free_port();
    let _inbound = Envoy::start(
        "inbound",
        dir,
        &bootstrap(
            free_port(),
            "inbound",
            &[filtered_listener(
                "ingress",
                inbound_port,
                &generated("local-reply"),
                &generated("filters"),
            )],
            &[
                static_cluster("upstream", echo.addr, false),
                generated("cluster"),
            ],
        ),
    );
    let out_port = free_port();
    let _outbound = Envoy::start(
        "outbound",
        dir,
        &ext_authz_proxy(free_port(), out_port, addr(inbound_port), helper.listen),
    );
    let r = get(out_port, &[]).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-spiffe-id"], partner_client.as_str());

    // example.org drops the federation: the relationship and partner.org's bundle.
    a.server.drop_federation("partner.org");
    let dropped = Instant::now();
    wait_until(
        "partner.org's mTLS refused",
        Duration::from_secs(60),
        || get(mtls_client_port, &[]).is_some_and(|r| r.status != 200),
    );
    let mtls_after = dropped.elapsed();
    wait_until("partner.org's JWT refused", Duration::from_secs(60), || {
        get(out_port, &[]).is_some_and(|r| r.status == 401)
    });
    let jwt_after = dropped.elapsed();
    eprintln!("federation dropped: mTLS refused after {mtls_after:?}, JWT after {jwt_after:?}");
    assert!(jwt_after < Duration::from_secs(30), "{jwt_after:?}");
}
