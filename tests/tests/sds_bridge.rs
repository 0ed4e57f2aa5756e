#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! sds-bridge with real Envoys: mTLS between two Envoys whose certificates and validation
//! contexts come from bridges fed by dev agents, federation through `ALL`, rotation under load
//! with zero failed requests, start before the agent, agent restarts.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use suite_tests::envoy::{EchoServer, Envoy, request};
use suite_tests::sds::{
    MtlsPair, SdsBridge, Shape, Workload, bootstrap, common_tls_context, http_listener,
    mtls_listener, sds_cluster, tls_cluster, xfcc_uri_and_serial,
};
use suite_tests::{DevAgent, free_port, wait_until};

fn workload(root: &Path, name: &str, td: &str, state: &Path, extra: &[&str]) -> Workload {
    Workload::start(root, name, td, state, extra, &[])
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn get(port: u16, path: &str) -> Option<suite_tests::envoy::Response> {
    request(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "GET",
        path,
        &[],
    )
}

/// The client SPIFFE ID the server side saw, from the echoed XFCC header.
fn peer_id(r: &suite_tests::envoy::Response) -> String {
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC in {}", r.body))
        .to_owned();
    xfcc_uri_and_serial(&xfcc).0
}

#[test]
fn mtls_between_envoys_with_sds_secrets_federation_through_all_and_foreign_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("state");
    // The server's agent federates with partner.test; the partner's agent with example.org.
    // All agents share one state dir, so each trust domain has one CA across agents.
    let server = workload(
        root,
        "server",
        "example.org",
        &state,
        &["--federate-with", "partner.test"],
    );
    let client = workload(root, "client", "example.org", &state, &[]);
    let partner = workload(
        root,
        "partner",
        "partner.test",
        &state,
        &["--federate-with", "example.org"],
    );
    let evil = workload(root, "evil", "evil.test", &root.join("evil-state"), &[]);

    let echo = EchoServer::start();
    // Server Envoy: listener `vm` in a VM's shape (own trust domain only), listener `all`
    // trusting every bundle the workload has.
    let (vm_port, all_port) = (free_port(), free_port());
    let server_yaml = bootstrap(
        free_port(),
        "server",
        &[
            mtls_listener(
                "vm",
                vm_port,
                &common_tls_context(
                    Shape::Vm,
                    "sds",
                    "spiffe://example.org/server",
                    "example.org",
                ),
            ),
            mtls_listener(
                "all",
                all_port,
                &common_tls_context(Shape::All, "sds", "", ""),
            ),
        ],
        &[
            sds_cluster("sds", &server.bridge.socket),
            suite_tests::envoy::static_cluster("upstream", echo.addr, false),
        ],
    );
    let server_envoy = Envoy::start("envoy-server", root, &server_yaml);

    // Client Envoy: one listener per identity, `/vm` and `/all` routes to the two listeners.
    let vm: std::net::SocketAddr = format!("127.0.0.1:{vm_port}").parse().unwrap();
    let all: std::net::SocketAddr = format!("127.0.0.1:{all_port}").parse().unwrap();
    let identities = [
        ("client", Shape::Istio, &client),
        ("partner", Shape::All, &partner),
        ("evil", Shape::NoValidation, &evil),
    ];
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut ports = Vec::new();
    for (name, shape, w) in identities {
        let port = free_port();
        ports.push(port);
        let sds = format!("sds_{name}");
        let tls = common_tls_context(shape, &sds, "", "");
        clusters.push(sds_cluster(&sds, &w.bridge.socket));
        clusters.push(tls_cluster(&format!("{name}_vm"), vm, &tls, 100));
        clusters.push(tls_cluster(&format!("{name}_all"), all, &tls, 100));
        listeners.push(http_listener(
            name,
            port,
            &[
                ("/vm", &format!("{name}_vm")),
                ("/all", &format!("{name}_all")),
            ],
        ));
    }
    let _client_envoy = Envoy::start(
        "envoy-client",
        root,
        &bootstrap(free_port(), "client", &listeners, &clusters),
    );
    let [client_port, partner_port, evil_port] = ports[..] else {
        unreachable!()
    };

    // Own trust domain, Istio-shaped client → VM-shaped server: mTLS, the server sees the ID.
    let r = get(client_port, "/vm").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(peer_id(&r), "spiffe://example.org/client");
    let r = get(client_port, "/all").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // Federated client: refused where only example.org is trusted, let in through ALL.
    let fail_verify = format!("listener.127.0.0.1_{vm_port}.ssl.fail_verify_error");
    let before = server_envoy.stat(&fail_verify);
    let r = get(partner_port, "/vm").unwrap();
    assert_eq!(
        r.status, 503,
        "partner must be refused by the VM listener: {}",
        r.body
    );
    let after = server_envoy.stat(&fail_verify);
    assert!(
        after.unwrap_or(0) > before.unwrap_or(0),
        "the server refused the certificate: {}",
        server_envoy.stats_matching("ssl.")
    );
    let r = get(partner_port, "/all").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(peer_id(&r), "spiffe://partner.test/partner");

    // Foreign trust domain (its client skips server validation, so only the server decides).
    for path in ["/vm", "/all"] {
        let r = get(evil_port, path).unwrap();
        assert_eq!(r.status, 503, "evil.test let in on {path}: {}", r.body);
    }
    assert!(
        echo.seen()
            .iter()
            .all(|e| !e["headers"]["x-forwarded-client-cert"]
                .as_str()
                .unwrap_or_default()
                .contains("evil.test")),
        "no request from evil.test reached the upstream"
    );

    for w in [&server, &client, &partner, &evil] {
        assert_eq!(w.bridge.metric("sds_bridge_nacks_total"), 0.0);
        let _ = &w.agent;
    }
}

#[test]
fn rotation_under_load_drops_no_request_and_the_server_sees_new_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("state");
    // 4 s SVIDs, re-issued at 45 %: a rotation about every 1.8 s on each side.
    let ttl = ["--x509-ttl", "4s"];
    let server = workload(root, "server", "example.org", &state, &ttl);
    let client = workload(root, "client", "example.org", &state, &ttl);
    let echo = EchoServer::start();
    let istio = common_tls_context(Shape::Istio, "sds", "", "");
    let pair = MtlsPair::start(
        root,
        (&server.bridge.socket, &istio),
        (&client.bridge.socket, &istio),
        echo.addr,
        20,
    );
    let port = pair.port;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let serials = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures, serials) =
                (stop.clone(), ok.clone(), failures.clone(), serials.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(port, "/") {
                        Some(r) if r.status == 200 => {
                            let (uri, serial) = xfcc_uri_and_serial(
                                r.json()["headers"]["x-forwarded-client-cert"]
                                    .as_str()
                                    .unwrap(),
                            );
                            assert_eq!(uri, "spiffe://example.org/client");
                            serials.lock().unwrap().push(serial);
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

    // Run until the client side has been through at least four new SVIDs (pushes counted by
    // its bridge after the first), bounded in time.
    let pushes_at_start = client.bridge.metric("sds_bridge_pushes_total");
    let started = Instant::now();
    wait_until("four client rotations", Duration::from_secs(40), || {
        client.bridge.metric("sds_bridge_pushes_total") >= pushes_at_start + 4.0
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let serials = serials.lock().unwrap();
    let distinct: BTreeSet<&String> = serials.iter().collect();
    eprintln!(
        "{} requests in {:?}, {} failed, {} distinct client serials",
        ok.load(Ordering::Relaxed),
        started.elapsed(),
        failures.len(),
        distinct.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(
        distinct.len() >= 4,
        "the server saw only {} client certificates across 4 rotations",
        distinct.len()
    );
    for w in [&server, &client] {
        assert_eq!(w.bridge.metric("sds_bridge_nacks_total"), 0.0);
        let _ = &w.agent;
    }
    assert_eq!(
        pair.client
            .stat("cluster.mtls.upstream_cx_connect_fail")
            .unwrap_or(0),
        0
    );
}

#[test]
fn bridge_before_agent_warms_envoy_when_the_svid_arrives_and_survives_agent_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("state");
    let (server_dir, client_dir) = (root.join("server"), root.join("client"));
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&client_dir).unwrap();
    let (_, server_api) = DevAgent::planned(&server_dir);
    let (_, client_api) = DevAgent::planned(&client_dir);

    // Bridges and Envoys first; no agent anywhere yet.
    let server_bridge = SdsBridge::start("sds-bridge", &server_dir, &server_api, &[]);
    let client_bridge = SdsBridge::start("sds-bridge", &client_dir, &client_api, &[]);
    assert_eq!(server_bridge.readyz(), 503);
    let echo = EchoServer::start();
    let mtls_port = free_port();
    let mut server_envoy = Envoy::spawn(
        "envoy-server",
        root,
        &bootstrap(
            free_port(),
            "server",
            &[mtls_listener(
                "mtls",
                mtls_port,
                &common_tls_context(Shape::Istio, "sds", "", ""),
            )],
            &[
                sds_cluster("sds", &server_bridge.socket),
                suite_tests::envoy::static_cluster("upstream", echo.addr, false),
            ],
        ),
    );
    let port = free_port();
    let mtls: std::net::SocketAddr = format!("127.0.0.1:{mtls_port}").parse().unwrap();
    let mut client_envoy = Envoy::spawn(
        "envoy-client",
        root,
        &bootstrap(
            free_port(),
            "client",
            &[http_listener("out", port, &[("/", "mtls")])],
            &[
                sds_cluster("sds", &client_bridge.socket),
                tls_cluster(
                    "mtls",
                    mtls,
                    &common_tls_context(Shape::Istio, "sds", "", ""),
                    5,
                ),
            ],
        ),
    );
    assert!(
        get(port, "/").is_none_or(|r| r.status != 200),
        "no request can succeed before any SVID exists"
    );

    let id = |n: &str| format!("spiffe://example.org/{n}");
    let args = |n: &str| {
        vec![
            "--trust-domain".to_owned(),
            "example.org".to_owned(),
            "--spiffe-id".to_owned(),
            id(n),
            "--state-dir".to_owned(),
            state.display().to_string(),
        ]
    };
    let server_args = args("server");
    let client_args = args("client");
    let mut server_agent = DevAgent::start(&server_dir, &as_str(&server_args));
    let _client_agent = DevAgent::start(&client_dir, &as_str(&client_args));
    let agents_up = Instant::now();
    server_envoy.wait_live(Duration::from_secs(30));
    client_envoy.wait_live(Duration::from_secs(30));
    wait_until(
        "a request through both Envoys",
        Duration::from_secs(30),
        || get(port, "/").is_some_and(|r| r.status == 200),
    );
    eprintln!(
        "first mTLS request {:?} after the agents started",
        agents_up.elapsed()
    );

    // Agent restart: the server side keeps serving with its last secrets meanwhile, and gets
    // the new SVID afterwards.
    let pushes = server_bridge.metric("sds_bridge_pushes_total");
    server_agent.proc.kill();
    for _ in 0..20 {
        let r = get(port, "/").unwrap();
        assert_eq!(
            r.status, 200,
            "served with the last secrets while the agent is down"
        );
    }
    server_agent.restart();
    wait_until(
        "a push of the re-issued SVID",
        Duration::from_secs(20),
        || server_bridge.metric("sds_bridge_pushes_total") > pushes,
    );
    wait_until(
        "requests after the restart",
        Duration::from_secs(10),
        || get(port, "/").is_some_and(|r| r.status == 200),
    );
    assert_eq!(server_bridge.metric("sds_bridge_nacks_total"), 0.0);
}
